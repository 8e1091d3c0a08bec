from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageInput(_message.Message):
    __slots__ = ("encoded", "raw")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawImage
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ...) -> None: ...

class RawImage(_message.Message):
    __slots__ = ("data", "height", "width", "channels")
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    height: int
    width: int
    channels: int
    def __init__(self, data: _Optional[bytes] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("png", "width", "height", "grid_height", "grid_width", "codes")
    PNG_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    GRID_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    GRID_WIDTH_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    width: int
    height: int
    grid_height: int
    grid_width: int
    codes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, png: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., grid_height: _Optional[int] = ..., grid_width: _Optional[int] = ..., codes: _Optional[_Iterable[int]] = ...) -> None: ...

class GridSize(_message.Message):
    __slots__ = ("height", "width")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ...) -> None: ...

class GenerationOptions(_message.Message):
    __slots__ = ("image_size", "aspect_ratio", "text_sampling", "image_sampling", "cfg_scale", "seed", "max_new_tokens", "logit_bias", "jacobi_window")
    class LogitBiasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ASPECT_RATIO_FIELD_NUMBER: _ClassVar[int]
    TEXT_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    CFG_SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    JACOBI_WINDOW_FIELD_NUMBER: _ClassVar[int]
    image_size: GridSize
    aspect_ratio: str
    text_sampling: SamplingParams
    image_sampling: SamplingParams
    cfg_scale: float
    seed: int
    max_new_tokens: int
    logit_bias: _containers.ScalarMap[int, float]
    jacobi_window: int
    def __init__(self, image_size: _Optional[_Union[GridSize, _Mapping]] = ..., aspect_ratio: _Optional[str] = ..., text_sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., image_sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., cfg_scale: _Optional[float] = ..., seed: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., logit_bias: _Optional[_Mapping[int, float]] = ..., jacobi_window: _Optional[int] = ...) -> None: ...

class TextDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class ImageStarted(_message.Message):
    __slots__ = ("index", "grid_height", "grid_width")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    GRID_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    GRID_WIDTH_FIELD_NUMBER: _ClassVar[int]
    index: int
    grid_height: int
    grid_width: int
    def __init__(self, index: _Optional[int] = ..., grid_height: _Optional[int] = ..., grid_width: _Optional[int] = ...) -> None: ...

class ImageProgress(_message.Message):
    __slots__ = ("index", "rows_done", "rows_total")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ROWS_DONE_FIELD_NUMBER: _ClassVar[int]
    ROWS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    index: int
    rows_done: int
    rows_total: int
    def __init__(self, index: _Optional[int] = ..., rows_done: _Optional[int] = ..., rows_total: _Optional[int] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("reason", "prompt_tokens", "generated_tokens", "image_tokens", "incomplete_image", "timings")
    class TimingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INCOMPLETE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    prompt_tokens: int
    generated_tokens: int
    image_tokens: int
    incomplete_image: bool
    timings: _containers.ScalarMap[str, float]
    def __init__(self, reason: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., image_tokens: _Optional[int] = ..., incomplete_image: _Optional[bool] = ..., timings: _Optional[_Mapping[str, float]] = ...) -> None: ...
