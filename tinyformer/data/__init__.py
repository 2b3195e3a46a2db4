"""tinyformer.data"""
