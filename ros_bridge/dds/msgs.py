"""ROS 2 message types as cyclonedds IDL structs, named as rmw_cyclonedds names them on the wire.

ROS 2 maps `pkg/msg/Name` to the DDS type `pkg::msg::dds_::Name_` (final extensibility, XCDR1), so these structs
match real ROS 2 publishers and subscribers field for field.
"""

from dataclasses import dataclass, field

import cyclonedds.idl.annotations as annotate
import cyclonedds.idl.types as types
from cyclonedds.idl import IdlStruct

from ..images import Header, ImageMsg


@dataclass
@annotate.final
class Time_(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: types.int32 = 0
    nanosec: types.uint32 = 0


@dataclass
@annotate.final
class Header_(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time_ = field(default_factory=Time_)
    frame_id: str = ""


@dataclass
@annotate.final
class Image_(IdlStruct, typename="sensor_msgs::msg::dds_::Image_"):
    header: Header_ = field(default_factory=Header_)
    height: types.uint32 = 0
    width: types.uint32 = 0
    encoding: str = ""
    is_bigendian: types.uint8 = 0
    step: types.uint32 = 0
    data: types.sequence[types.uint8] = field(default_factory=bytes)


@dataclass
@annotate.final
class CompressedImage_(IdlStruct, typename="sensor_msgs::msg::dds_::CompressedImage_"):
    header: Header_ = field(default_factory=Header_)
    format: str = ""
    data: types.sequence[types.uint8] = field(default_factory=bytes)


@dataclass
@annotate.final
class String_(IdlStruct, typename="std_msgs::msg::dds_::String_"):
    data: str = ""


def header_to_idl(h: Header) -> Header_:
    return Header_(Time_(int(h.stamp.sec), int(h.stamp.nanosec)), h.frame_id)


def image_to_idl(m: ImageMsg) -> Image_:
    return Image_(header_to_idl(m.header), m.height, m.width, m.encoding, m.is_bigendian, m.step, m.data)
