from emu35_robot.proto.emu35.robot.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PlanRequest(_message.Message):
    __slots__ = ("instruction", "images", "max_subgoals", "options")
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_SUBGOALS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    instruction: str
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.ImageInput]
    max_subgoals: int
    options: _common_pb2.GenerationOptions
    def __init__(self, instruction: _Optional[str] = ..., images: _Optional[_Iterable[_Union[_common_pb2.ImageInput, _Mapping]]] = ..., max_subgoals: _Optional[int] = ..., options: _Optional[_Union[_common_pb2.GenerationOptions, _Mapping]] = ...) -> None: ...

class Subgoal(_message.Message):
    __slots__ = ("index", "text", "chain_of_thought", "keyframe")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHAIN_OF_THOUGHT_FIELD_NUMBER: _ClassVar[int]
    KEYFRAME_FIELD_NUMBER: _ClassVar[int]
    index: int
    text: str
    chain_of_thought: str
    keyframe: _common_pb2.Image
    def __init__(self, index: _Optional[int] = ..., text: _Optional[str] = ..., chain_of_thought: _Optional[str] = ..., keyframe: _Optional[_Union[_common_pb2.Image, _Mapping]] = ...) -> None: ...

class SubgoalDelta(_message.Message):
    __slots__ = ("index", "text")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    index: int
    text: str
    def __init__(self, index: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class SubgoalCompleted(_message.Message):
    __slots__ = ("subgoal",)
    SUBGOAL_FIELD_NUMBER: _ClassVar[int]
    subgoal: Subgoal
    def __init__(self, subgoal: _Optional[_Union[Subgoal, _Mapping]] = ...) -> None: ...

class ChainOfThought(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class PlanFinished(_message.Message):
    __slots__ = ("subgoals", "trailing_text", "global_chain_of_thought", "usage")
    SUBGOALS_FIELD_NUMBER: _ClassVar[int]
    TRAILING_TEXT_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_CHAIN_OF_THOUGHT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    subgoals: _containers.RepeatedCompositeFieldContainer[Subgoal]
    trailing_text: str
    global_chain_of_thought: str
    usage: _common_pb2.Usage
    def __init__(self, subgoals: _Optional[_Iterable[_Union[Subgoal, _Mapping]]] = ..., trailing_text: _Optional[str] = ..., global_chain_of_thought: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ...) -> None: ...

class PlanEvent(_message.Message):
    __slots__ = ("subgoal_delta", "keyframe_started", "keyframe_progress", "subgoal_completed", "chain_of_thought", "finished")
    SUBGOAL_DELTA_FIELD_NUMBER: _ClassVar[int]
    KEYFRAME_STARTED_FIELD_NUMBER: _ClassVar[int]
    KEYFRAME_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SUBGOAL_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    CHAIN_OF_THOUGHT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    subgoal_delta: SubgoalDelta
    keyframe_started: _common_pb2.ImageStarted
    keyframe_progress: _common_pb2.ImageProgress
    subgoal_completed: SubgoalCompleted
    chain_of_thought: ChainOfThought
    finished: PlanFinished
    def __init__(self, subgoal_delta: _Optional[_Union[SubgoalDelta, _Mapping]] = ..., keyframe_started: _Optional[_Union[_common_pb2.ImageStarted, _Mapping]] = ..., keyframe_progress: _Optional[_Union[_common_pb2.ImageProgress, _Mapping]] = ..., subgoal_completed: _Optional[_Union[SubgoalCompleted, _Mapping]] = ..., chain_of_thought: _Optional[_Union[ChainOfThought, _Mapping]] = ..., finished: _Optional[_Union[PlanFinished, _Mapping]] = ...) -> None: ...
