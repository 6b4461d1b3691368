"""songflow.audio"""
