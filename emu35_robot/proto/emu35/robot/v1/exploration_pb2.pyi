from emu35_robot.proto.emu35.robot.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExploreStart(_message.Message):
    __slots__ = ("scene", "images", "options")
    SCENE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    scene: str
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.ImageInput]
    options: _common_pb2.GenerationOptions
    def __init__(self, scene: _Optional[str] = ..., images: _Optional[_Iterable[_Union[_common_pb2.ImageInput, _Mapping]]] = ..., options: _Optional[_Union[_common_pb2.GenerationOptions, _Mapping]] = ...) -> None: ...

class ExploreCommand(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class ExploreRequest(_message.Message):
    __slots__ = ("start", "command")
    START_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    start: ExploreStart
    command: ExploreCommand
    def __init__(self, start: _Optional[_Union[ExploreStart, _Mapping]] = ..., command: _Optional[_Union[ExploreCommand, _Mapping]] = ...) -> None: ...

class ExploreView(_message.Message):
    __slots__ = ("turn", "index", "image", "narration")
    TURN_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    NARRATION_FIELD_NUMBER: _ClassVar[int]
    turn: int
    index: int
    image: _common_pb2.Image
    narration: str
    def __init__(self, turn: _Optional[int] = ..., index: _Optional[int] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., narration: _Optional[str] = ...) -> None: ...

class TurnFinished(_message.Message):
    __slots__ = ("turn", "narration", "usage", "context_tokens", "context_limit")
    TURN_FIELD_NUMBER: _ClassVar[int]
    NARRATION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    turn: int
    narration: str
    usage: _common_pb2.Usage
    context_tokens: int
    context_limit: int
    def __init__(self, turn: _Optional[int] = ..., narration: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., context_tokens: _Optional[int] = ..., context_limit: _Optional[int] = ...) -> None: ...

class ExploreEvent(_message.Message):
    __slots__ = ("narration", "view_started", "view_progress", "view", "turn_finished")
    NARRATION_FIELD_NUMBER: _ClassVar[int]
    VIEW_STARTED_FIELD_NUMBER: _ClassVar[int]
    VIEW_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    TURN_FINISHED_FIELD_NUMBER: _ClassVar[int]
    narration: _common_pb2.TextDelta
    view_started: _common_pb2.ImageStarted
    view_progress: _common_pb2.ImageProgress
    view: ExploreView
    turn_finished: TurnFinished
    def __init__(self, narration: _Optional[_Union[_common_pb2.TextDelta, _Mapping]] = ..., view_started: _Optional[_Union[_common_pb2.ImageStarted, _Mapping]] = ..., view_progress: _Optional[_Union[_common_pb2.ImageProgress, _Mapping]] = ..., view: _Optional[_Union[ExploreView, _Mapping]] = ..., turn_finished: _Optional[_Union[TurnFinished, _Mapping]] = ...) -> None: ...
