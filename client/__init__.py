"""samrt.client"""
