"""songflow.interfaces"""
