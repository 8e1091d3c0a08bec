"""Evaluation harness: planners x tasks x engines, closed-loop episodes, resumable runs and reports."""
