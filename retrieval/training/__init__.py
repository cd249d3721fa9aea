"""Contrastive training of the shared space (image, text and audio towers) and its evaluation.

Nothing heavy at import time: the trainers import torch when called.
"""
