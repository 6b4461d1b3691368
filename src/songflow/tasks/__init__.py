"""songflow.tasks"""
