"""Instruction encoding: encode/decode round trips and the error messages."""

import pytest
from amaranth.lib import enum
from hypothesis import given, settings
from hypothesis import strategies as st

from dlfusion.hw.isa import (
    INSTR_BITS,
    INSTRUCTION,
    PAYLOADS,
    Buffer,
    IsaError,
    MatmulMode,
    Opcode,
    decode,
    decode_program,
    encode,
    encode_program,
)


def _is_enum(shape):
    return isinstance(shape, type) and issubclass(shape, enum.Enum)


def _field_values(opcode):
    """A strategy for a dict of random in-range payload field values of ``opcode``."""
    fields = {}
    for name, field in PAYLOADS[opcode]:
        if _is_enum(field.shape):
            fields[name] = st.sampled_from(list(field.shape))
        else:
            fields[name] = st.integers(0, (1 << field.width) - 1)
    return st.fixed_dictionaries(fields)


@st.composite
def instructions(draw):
    opcode = draw(st.sampled_from(list(Opcode)))
    fields = draw(_field_values(opcode))
    wait = draw(st.integers(0, 255))
    signal = draw(st.integers(0, 255))
    return opcode, wait, signal, fields


def _field_offset(opcode, name):
    payload = INSTRUCTION["payload"].offset
    return payload + PAYLOADS[opcode][name].offset


def test_every_opcode_has_a_payload_and_the_word_is_256_bits():
    assert set(PAYLOADS) == set(Opcode)
    assert INSTRUCTION.size == INSTR_BITS == 256
    for layout in PAYLOADS.values():
        assert layout.size <= INSTR_BITS - 24


@settings(max_examples=400, deadline=None)
@given(instructions())
def test_encode_decode_round_trip(instruction):
    opcode, wait, signal, fields = instruction
    word = encode(opcode, wait=wait, signal=signal, **fields)
    assert 0 <= word < 1 << INSTR_BITS
    decoded = decode(word)
    assert decoded.pop("opcode") is opcode
    assert decoded.pop("wait") == wait
    assert decoded.pop("signal") == signal
    assert decoded == fields
    # the header sits at fixed offsets for every opcode
    assert word & 0x3F == opcode.value
    assert (word >> 6) & 3 == 0
    assert (word >> 8) & 0xFF == wait
    assert (word >> 16) & 0xFF == signal


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_encode_rejects_out_of_width_values_naming_the_field(data):
    opcode = data.draw(st.sampled_from([op for op in Opcode if any(True for _ in PAYLOADS[op])]))
    names = [name for name, field in PAYLOADS[opcode] if not _is_enum(field.shape)]
    if not names:
        return
    name = data.draw(st.sampled_from(names))
    width = PAYLOADS[opcode][name].width
    value = data.draw(st.one_of(st.integers(1 << width, 1 << (width + 8)), st.integers(-1000, -1)))
    with pytest.raises(IsaError) as info:
        encode(opcode, **{name: value})
    message = str(info.value)
    assert f"{opcode.name}.{name}" in message
    assert str(value) in message
    assert f"{width}" in message


@pytest.mark.parametrize("header", ["wait", "signal"])
@pytest.mark.parametrize("value", [256, -1])
def test_encode_rejects_bad_semaphore_masks(header, value):
    with pytest.raises(IsaError, match=f"{header} mask {value}"):
        encode(Opcode.SYNC, **{header: value})


def test_encode_rejects_unknown_fields_naming_them_and_the_accepted_ones():
    with pytest.raises(IsaError) as info:
        encode(Opcode.LOAD, n3=1)
    assert "'n3'" in str(info.value)
    assert "LOAD" in str(info.value)
    assert "sram_addr" in str(info.value)
    with pytest.raises(IsaError, match="'mode'"):
        encode(Opcode.REQUANT, mode=MatmulMode.MAX)
    with pytest.raises(IsaError, match="END has no field 'unit'"):
        encode(Opcode.END, unit=0)


def test_encode_rejects_reserved_enum_values():
    with pytest.raises(ValueError):
        encode(Opcode.SYNC, unit=3)
    with pytest.raises(ValueError):
        encode(Opcode.MATMUL, mode=3)
    assert decode(encode(Opcode.LOAD, buffer=3))["buffer"] is Buffer.LUT


@pytest.mark.parametrize("raw", [0, 9, 17, 42, 63])
def test_decode_bad_opcode(raw):
    word = encode(Opcode.LOAD, wait=3, n0=5)
    word = (word & ~0x3F) | raw
    with pytest.raises(IsaError, match=f"bad opcode {raw}"):
        decode(word)


@pytest.mark.parametrize("opcode, name", [
                                          (Opcode.MATMUL, "mode"), (Opcode.SYNC, "unit")])
def test_decode_reserved_field_value_names_the_field(opcode, name):
    word = encode(opcode) | 3 << _field_offset(opcode, name)
    with pytest.raises(IsaError) as info:
        decode(word)
    assert f"{opcode.name}.{name}" in str(info.value)
    assert "reserved value 3" in str(info.value)
    assert "bad opcode" not in str(info.value)


@settings(max_examples=50, deadline=None)
@given(st.lists(instructions(), max_size=12))
def test_program_round_trip(program):
    words = [encode(op, wait=w, signal=s, **f) for op, w, s, f in program]
    blob = encode_program(words)
    assert len(blob) == 32 * len(words)
    assert decode_program(blob) == words
    # little-endian: the opcode is the low 6 bits of each instruction's first byte
    for i, (op, *_rest) in enumerate(program):
        assert blob[32 * i] & 0x3F == op.value


def test_decode_program_rejects_partial_instructions():
    blob = encode_program([encode(Opcode.END)])
    with pytest.raises(IsaError, match="33 bytes is not a multiple of 32"):
        decode_program(blob + b"\0")


def test_enum_fields_round_trip_as_members():
    word = encode(Opcode.LOAD, buffer=Buffer.PARAM, sram_addr=7)
    fields = decode(word)
    assert fields["buffer"] is Buffer.PARAM
    assert fields["sram_addr"] == 7
