"""songflow.models"""
