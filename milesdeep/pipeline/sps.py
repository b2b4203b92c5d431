"""The one H.264 SPS field `--precise` must change: how many pictures the decoder reorders.

libx264, re-encoding a boundary without B-frames, declares `max_num_reorder_frames = 0` in
its in-band SPS. FFmpeg takes the stream's reorder depth from the first SPS a file's pictures
activate, so a cut that starts with re-encoded pictures reads as a stream with no reordering;
in Matroska, which stores no decode times, the ones FFmpeg rebuilds for the copied pictures
after it then go missing and backwards (and `ffmpeg -c copy` of the cut fails). Declaring the
source's depth instead is always allowed (a decoder only holds pictures back longer), so the
re-encoded SPS gets the source's `max_num_reorder_frames` (and a `max_dec_frame_buffering` at
least that). Everything else in the SPS is copied bit for bit.

Syntax: ITU-T H.264 7.3.2.1.1 (seq_parameter_set_data) and E.1.1 (vui_parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

# Profiles whose SPS carries chroma format, bit depths and scaling matrices.
_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def unescape(payload: bytes) -> bytes:
    """RBSP from a NAL unit's payload: emulation prevention bytes (00 00 03) removed."""
    out, zeros = bytearray(), 0
    for b in payload:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def escape(rbsp: bytes) -> bytes:
    """A NAL unit's payload from RBSP: 03 inserted wherever 00 00 precedes a byte <= 03."""
    out, zeros = bytearray(), 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.bits = "".join(f"{b:08b}" for b in data)
        self.pos = 0

    def u(self, n: int) -> int:
        if self.pos + n > len(self.bits):
            raise ValueError("SPS ends early")
        v = int(self.bits[self.pos:self.pos + n] or "0", 2)
        self.pos += n
        return v

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


def _ue_bits(v: int) -> str:
    code = f"{v + 1:b}"
    return "0" * (len(code) - 1) + code


@dataclass(frozen=True)
class Restriction:
    """Where an SPS's bitstream_restriction sits, and what it holds."""

    flag_at: int  # bit position of bitstream_restriction_flag in the RBSP
    fields: tuple[int, ...] | None  # its seven fields, None when the flag is 0

    @property
    def reorder(self) -> int | None:
        return None if self.fields is None else self.fields[5]


def _skip_hrd(r: _Bits) -> None:
    count = r.ue() + 1
    r.u(8)  # bit_rate_scale, cpb_size_scale
    for _ in range(count):
        r.ue()
        r.ue()
        r.u(1)
    r.u(20)  # four 5-bit fields


def restriction(sps: bytes) -> Restriction | None:
    """Parse an SPS NAL unit (header byte included) up to its bitstream restriction; None if
    it has no VUI to hold one."""
    r = _Bits(unescape(sps[1:]))
    profile = r.u(8)
    r.u(16)  # constraint flags, level_idc
    r.ue()  # seq_parameter_set_id
    if profile in _HIGH_PROFILES:
        chroma = r.ue()
        if chroma == 3:
            r.u(1)
        r.ue()
        r.ue()
        r.u(1)
        if r.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if r.u(1):
                    last = nxt = 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt:
                            nxt = (last + r.se() + 256) % 256
                        last = nxt or last
    r.ue()  # log2_max_frame_num_minus4
    poc = r.ue()
    if poc == 0:
        r.ue()
    elif poc == 1:
        r.u(1)
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.u(1)
    r.ue()
    r.ue()
    if not r.u(1):  # frame_mbs_only_flag
        r.u(1)
    r.u(1)
    if r.u(1):  # frame_cropping_flag
        for _ in range(4):
            r.ue()
    if not r.u(1):  # vui_parameters_present_flag
        return None
    if r.u(1) and r.u(8) == 255:  # aspect ratio, extended SAR
        r.u(32)
    if r.u(1):  # overscan
        r.u(1)
    if r.u(1):  # video signal type
        r.u(4)
        if r.u(1):
            r.u(24)
    if r.u(1):  # chroma location
        r.ue()
        r.ue()
    if r.u(1):  # timing
        r.u(65)
    nal, vcl = r.u(1), 0
    if nal:
        _skip_hrd(r)
    vcl = r.u(1)
    if vcl:
        _skip_hrd(r)
    if nal or vcl:
        r.u(1)
    r.u(1)  # pic_struct_present_flag
    at = r.pos
    if not r.u(1):
        return Restriction(at, None)
    fields = (r.u(1), r.ue(), r.ue(), r.ue(), r.ue(), r.ue(), r.ue())
    return Restriction(at, fields)


def with_reorder(sps: bytes, reorder: int) -> bytes:
    """`sps` declaring `reorder` pictures of reordering (and a decoded picture buffer that
    holds them); unchanged if it declares as many already or has no VUI."""
    found = restriction(sps)
    if found is None or found.fields is None or found.fields[5] >= reorder:
        return sps  # (libx264 always writes the restriction)
    bits = _Bits(unescape(sps[1:])).bits
    fields = list(found.fields)
    fields[5], fields[6] = reorder, max(fields[6], reorder)
    new = (bits[:found.flag_at] + "1" + str(fields[0])
           + "".join(_ue_bits(v) for v in fields[1:]) + "1")
    new += "0" * (-len(new) % 8)
    rbsp = bytes(int(new[i:i + 8], 2) for i in range(0, len(new), 8))
    return sps[:1] + escape(rbsp)
