"""samrt.model_repository"""
