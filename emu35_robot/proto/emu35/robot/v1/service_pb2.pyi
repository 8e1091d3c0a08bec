from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_receive_message_bytes", "max_send_message_bytes", "max_images", "max_image_bytes", "max_image_pixels", "max_instruction_chars", "max_new_tokens", "max_subgoals", "default_max_subgoals", "max_queue", "max_sessions", "max_turns", "max_logit_bias", "context_tokens", "max_grid_side")
    MAX_RECEIVE_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SEND_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_INSTRUCTION_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_SUBGOALS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MAX_SUBGOALS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_TURNS_FIELD_NUMBER: _ClassVar[int]
    MAX_LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_GRID_SIDE_FIELD_NUMBER: _ClassVar[int]
    max_receive_message_bytes: int
    max_send_message_bytes: int
    max_images: int
    max_image_bytes: int
    max_image_pixels: int
    max_instruction_chars: int
    max_new_tokens: int
    max_subgoals: int
    default_max_subgoals: int
    max_queue: int
    max_sessions: int
    max_turns: int
    max_logit_bias: int
    context_tokens: int
    max_grid_side: int
    def __init__(self, max_receive_message_bytes: _Optional[int] = ..., max_send_message_bytes: _Optional[int] = ..., max_images: _Optional[int] = ..., max_image_bytes: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., max_instruction_chars: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., max_subgoals: _Optional[int] = ..., default_max_subgoals: _Optional[int] = ..., max_queue: _Optional[int] = ..., max_sessions: _Optional[int] = ..., max_turns: _Optional[int] = ..., max_logit_bias: _Optional[int] = ..., context_tokens: _Optional[int] = ..., max_grid_side: _Optional[int] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("model", "checkpoint", "random_weights", "tasks", "limits", "device", "dtype", "version", "parameters", "auth_required", "tls")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    RANDOM_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    AUTH_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    model: str
    checkpoint: str
    random_weights: bool
    tasks: _containers.RepeatedScalarFieldContainer[str]
    limits: Limits
    device: str
    dtype: str
    version: str
    parameters: int
    auth_required: bool
    tls: bool
    def __init__(self, model: _Optional[str] = ..., checkpoint: _Optional[str] = ..., random_weights: _Optional[bool] = ..., tasks: _Optional[_Iterable[str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., version: _Optional[str] = ..., parameters: _Optional[int] = ..., auth_required: _Optional[bool] = ..., tls: _Optional[bool] = ...) -> None: ...
