"""tinyformer.train"""
