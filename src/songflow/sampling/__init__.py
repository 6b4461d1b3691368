"""songflow.sampling"""
