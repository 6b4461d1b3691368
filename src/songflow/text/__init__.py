"""songflow.text"""
