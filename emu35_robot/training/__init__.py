"""Our own training data and model: simulator demonstrations -> Emu3.5-format sequences -> Emu3.5-mini.

Wires `sim_envs` (experts) to `model` (tokenizers, trainers); neither of those knows the other.
"""
