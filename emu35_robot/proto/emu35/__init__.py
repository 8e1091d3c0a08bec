"""Namespace of the emu35.robot.v1 proto package (generated code lives in v1/)."""
