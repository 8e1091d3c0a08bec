"""Gymnasium tabletop environments on MuJoCo and PyBullet, scripted experts and plan executors.

Knows nothing of the model: plans arrive as subgoal text plus key-frame images.
"""
