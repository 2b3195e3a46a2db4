"""tinyformer.lab"""
