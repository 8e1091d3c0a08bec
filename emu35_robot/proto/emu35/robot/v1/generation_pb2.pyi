from emu35_robot.proto.emu35.robot.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TASK_T2I: _ClassVar[Task]
    TASK_X2I: _ClassVar[Task]
    TASK_STORY: _ClassVar[Task]
    TASK_HOWTO: _ClassVar[Task]
TASK_UNSPECIFIED: Task
TASK_T2I: Task
TASK_X2I: Task
TASK_STORY: Task
TASK_HOWTO: Task

class GenerateRequest(_message.Message):
    __slots__ = ("task", "prompt", "images", "options")
    TASK_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    task: Task
    prompt: str
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.ImageInput]
    options: _common_pb2.GenerationOptions
    def __init__(self, task: _Optional[_Union[Task, str]] = ..., prompt: _Optional[str] = ..., images: _Optional[_Iterable[_Union[_common_pb2.ImageInput, _Mapping]]] = ..., options: _Optional[_Union[_common_pb2.GenerationOptions, _Mapping]] = ...) -> None: ...

class GeneratedImage(_message.Message):
    __slots__ = ("index", "image", "caption")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    index: int
    image: _common_pb2.Image
    caption: str
    def __init__(self, index: _Optional[int] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., caption: _Optional[str] = ...) -> None: ...

class GenerateFinished(_message.Message):
    __slots__ = ("text", "usage")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    text: str
    usage: _common_pb2.Usage
    def __init__(self, text: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("text", "image_started", "image_progress", "image", "finished")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_STARTED_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    text: _common_pb2.TextDelta
    image_started: _common_pb2.ImageStarted
    image_progress: _common_pb2.ImageProgress
    image: GeneratedImage
    finished: GenerateFinished
    def __init__(self, text: _Optional[_Union[_common_pb2.TextDelta, _Mapping]] = ..., image_started: _Optional[_Union[_common_pb2.ImageStarted, _Mapping]] = ..., image_progress: _Optional[_Union[_common_pb2.ImageProgress, _Mapping]] = ..., image: _Optional[_Union[GeneratedImage, _Mapping]] = ..., finished: _Optional[_Union[GenerateFinished, _Mapping]] = ...) -> None: ...
