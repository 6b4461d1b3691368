"""songflow.nn"""
