"""Real, small media files of every type WeCom archives, built by hand from a seeded RNG.

Why hand-written: the simulator must not pull in Pillow or ffmpeg, yet archivers,
exporters and thumbnailers downstream sniff magic numbers and parse headers, so every
file here is structurally valid for its type (JPEG markers and a decodable baseline
scan, PNG chunks with CRCs, GIF LZW data, AMR-NB frames, MP4 boxes, PDF with a correct
xref, OOXML zip packages). Sizes are reached with padding the formats allow (JPEG COM
segments, a private PNG chunk, GIF comment blocks, the MP4 ``mdat`` payload, PDF
comment lines, a thumbnail part in OOXML), exactly where a test needs an exact size.
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class MediaFile:
    """One generated file: its bytes plus what a WeCom message declares about it."""

    data: bytes
    ext: str
    mime: str
    width: int = 0
    height: int = 0
    play_length: int = 0  # seconds (voice, video)


class MediaSizeError(ValueError):
    """The requested exact size is smaller than the smallest valid file of that type."""


# --------------------------------------------------------------------------- helpers


def _split_sizes(total: int, max_part: int, overhead: int) -> list[int]:
    """Payload sizes of ``k`` padding containers whose overhead+payload add up to ``total``."""
    if total == 0:
        return []
    if total < overhead:
        raise MediaSizeError(f"padding of {total} bytes is below one container ({overhead})")
    parts = -(-total // (max_part + overhead))
    payload = total - parts * overhead
    base, extra = divmod(payload, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _no_eol(data: bytes) -> bytes:
    return data.replace(b"\n", b"\x0b").replace(b"\r", b"\x0c")


# --------------------------------------------------------------------------- JPEG

_JPEG_DC_SYMBOLS = 12  # categories 0..11, all coded with 4 bits (0000..1011)


def _jpeg_scan(rng: random.Random, blocks: int) -> bytes:
    """Entropy-coded data for DC-only 8x8 blocks: a smooth random mosaic.

    Each block: 4-bit DC category, its extra bits, then EOB (``00`` in our AC table).
    """
    acc = 0
    nbits = 0
    dc = 0
    for _ in range(blocks):
        target = max(-60, min(60, dc + rng.randint(-6, 6)))
        diff, dc = target - dc, target
        size = abs(diff).bit_length()
        extra = diff if diff >= 0 else diff + (1 << size) - 1
        acc = (acc << (4 + size + 2)) | (size << (size + 2)) | (extra << 2)
        nbits += 4 + size + 2
    pad = (-nbits) % 8
    acc = (acc << pad) | ((1 << pad) - 1)
    raw = acc.to_bytes((nbits + pad) // 8, "big") if nbits else b""
    return raw.replace(b"\xff", b"\xff\x00")


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", 0xFF00 | marker, len(payload) + 2) + payload


def jpeg(rng: random.Random, width: int, height: int, size: int | None = None) -> MediaFile:
    """Baseline greyscale JFIF; ``size`` (if given) is met exactly with COM segments."""
    head = b"\xff\xd8" + _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    tables = (
        _segment(0xDB, b"\x00" + bytes([16] * 64))
        + _segment(0xC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
        + _segment(0xC4, b"\x00" + bytes([0, 0, 0, _JPEG_DC_SYMBOLS] + [0] * 12) + bytes(range(12)))
        + _segment(0xC4, b"\x10" + bytes([0, 2] + [0] * 14) + b"\x00\x01")
        + _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    )
    blocks = -(-width // 8) * -(-height // 8)
    body = tables + _jpeg_scan(rng, blocks) + b"\xff\xd9"
    padding = b""
    trailer = b""
    if size is not None:
        missing = size - len(head) - len(body)
        if missing < 0:
            raise MediaSizeError(f"a {width}x{height} JPEG needs {len(head) + len(body)} bytes")
        if 0 < missing < 4:
            trailer = rng.randbytes(missing)  # bytes after EOI: tolerated by every decoder
        else:
            padding = b"".join(_segment(0xFE, rng.randbytes(n)) for n in _split_sizes(missing, 65533, 4))
    return MediaFile(head + padding + body + trailer, "jpg", "image/jpeg", width, height)


# --------------------------------------------------------------------------- PNG


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(rng: random.Random, width: int, height: int, size: int | None = None) -> MediaFile:
    """RGB PNG of noise; padding in a private ancillary chunk ``wxPd`` (safe to ignore)."""
    rows = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))
    head = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    idat = _png_chunk(b"IDAT", zlib.compress(rows, 6))
    tail = _png_chunk(b"IEND", b"")
    padding = b""
    if size is not None:
        missing = size - len(head) - len(idat) - len(tail)
        if missing < 0:
            raise MediaSizeError(f"a {width}x{height} PNG needs {size - missing} bytes")
        padding = b"".join(_png_chunk(b"wxPd", rng.randbytes(n)) for n in _split_sizes(missing, 1 << 20, 12))
    return MediaFile(head + idat + padding + tail, "png", "image/png", width, height)


# --------------------------------------------------------------------------- GIF

_GIF_CLEAR, _GIF_EOI, _GIF_CODE_BITS = 4, 5, 3


def _gif_lzw(pixels: list[int]) -> bytes:
    """LZW with a clear code before every pixel pair, so the code width never grows.

    After a clear, the first code adds no table entry and the second adds entry 6;
    the table never reaches 8 entries, so every code stays 3 bits wide.
    """
    acc = 0
    nbits = 0
    for i in range(0, len(pixels), 2):
        for code in (_GIF_CLEAR, *pixels[i : i + 2]):
            acc |= code << nbits
            nbits += _GIF_CODE_BITS
    acc |= _GIF_EOI << nbits
    nbits += _GIF_CODE_BITS
    return acc.to_bytes((nbits + 7) // 8, "little")


def _gif_sub_blocks(data: bytes) -> bytes:
    out = bytearray()
    for i in range(0, len(data), 255):
        chunk = data[i : i + 255]
        out += bytes([len(chunk)]) + chunk
    return bytes(out) + b"\x00"


def _gif_comment(rng: random.Random, total: int) -> bytes:
    """One comment extension of exactly ``total`` (>= 5) bytes: 21 FE, sub-blocks, 00.

    ``k`` sub-blocks carrying ``b`` bytes cost ``3 + k + b``; with k = ceil(R/256) for
    R = total - 3, every sub-block holds between 1 and 255 bytes.
    """
    rest = total - 3
    blocks = -(-rest // 256)
    base, extra = divmod(rest - blocks, blocks)
    sizes = [base + (1 if i < extra else 0) for i in range(blocks)]
    return b"\x21\xfe" + b"".join(bytes([n]) + rng.randbytes(n) for n in sizes) + b"\x00"


def gif(rng: random.Random, width: int, height: int, size: int | None = None) -> MediaFile:
    """GIF89a with a 4-colour palette; padding in comment extensions."""
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF1, 0, 0) + rng.randbytes(12)
    pixels = [rng.getrandbits(2) for _ in range(width * height)]
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02" + _gif_sub_blocks(_gif_lzw(pixels))
    padding = b""
    if size is not None:
        missing = size - len(head) - len(image) - 1
        if missing < 0:
            raise MediaSizeError(f"a {width}x{height} GIF needs {size - missing} bytes")
        if 0 < missing < 5:
            raise MediaSizeError("GIF padding must be 0 or at least 5 bytes")
        padding = _gif_comment(rng, missing) if missing else b""
    return MediaFile(head + padding + image + b"\x3b", "gif", "image/gif", width, height)


# --------------------------------------------------------------------------- AMR

_AMR_FRAME = 32  # AMR-NB mode 7 (12.2 kbit/s): 1 header byte + 31 bytes of speech bits
_AMR_FRAMES_PER_SECOND = 50


def amr(rng: random.Random, seconds: int) -> MediaFile:
    """AMR-NB file (``#!AMR\\n`` + 12.2 kbit/s frames): what WeCom serves for voice."""
    frames = max(1, seconds) * _AMR_FRAMES_PER_SECOND
    body = bytearray(rng.randbytes(frames * _AMR_FRAME))
    body[0::_AMR_FRAME] = b"\x3c" * frames  # frame header: FT=7, Q=1
    return MediaFile(b"#!AMR\n" + bytes(body), "amr", "audio/amr", play_length=max(1, seconds))


# --------------------------------------------------------------------------- MP4


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _mvhd(duration_ms: int) -> bytes:
    matrix = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    payload = (
        struct.pack(">IIIII", 0, 0, 0, 1000, duration_ms)
        + struct.pack(">IH", 0x10000, 0x100)
        + bytes(10)
        + matrix
        + bytes(24)
        + struct.pack(">I", 2)
    )
    return _box(b"mvhd", payload)


def mp4(rng: random.Random, seconds: int, size: int) -> MediaFile:
    """ISO-BMFF: ``ftyp`` + ``moov/mvhd`` + ``mdat``; ``size`` is met exactly via ``mdat``."""
    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 0x200) + b"isomiso2avc1mp41")
    moov = _box(b"moov", _mvhd(seconds * 1000))
    payload = size - len(ftyp) - len(moov) - 8
    if payload < 0:
        raise MediaSizeError(f"an MP4 needs at least {size - payload} bytes")
    return MediaFile(ftyp + moov + _box(b"mdat", rng.randbytes(payload)), "mp4", "video/mp4", play_length=seconds)


# --------------------------------------------------------------------------- PDF


def _pdf_text(s: str) -> bytes:
    safe = s.encode("latin-1", "replace").replace(b"\\", b"\\\\")
    return safe.replace(b"(", b"\\(").replace(b")", b"\\)")


def _pdf_build(lines: list[str], padding: bytes, crlf: bool = False) -> bytes:
    content = b"BT /F1 12 Tf 72 770 Td 16 TL " + b" ".join(b"(" + _pdf_text(x) + b") '" for x in lines) + b" ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + padding)
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF" % (len(objects) + 1, xref)
    return bytes(out + (b"\r\n" if crlf else b"\n"))


def _pdf_padding(rng: random.Random, total: int) -> bytes:
    """Binary comment lines (``%`` … ``\\n``) of exactly ``total`` bytes."""
    if total == 1:
        raise MediaSizeError("PDF padding cannot be exactly one byte")
    lines = _split_sizes(total, 254, 2)
    return b"".join(b"%" + _no_eol(rng.randbytes(n)) + b"\n" for n in lines)


def pdf(rng: random.Random, lines: list[str], size: int | None = None) -> MediaFile:
    """One-page PDF 1.4 (Helvetica text); padding as comments before the first object.

    Exact sizes: the padding shifts ``startxref``, whose digit count can skip one total
    size; the final end-of-line (LF or CRLF, both valid) covers that byte.
    """
    data = _pdf_build(lines, b"")
    if size is None or size == len(data):
        return MediaFile(data, "pdf", "application/pdf")
    for crlf in (False, True):
        pad = size - len(_pdf_build(lines, b"", crlf))
        for _ in range(4):
            if pad < 0 or pad == 1:
                break
            data = _pdf_build(lines, _pdf_padding(rng, pad), crlf)
            if len(data) == size:
                return MediaFile(data, "pdf", "application/pdf")
            pad += size - len(data)
    raise MediaSizeError(f"cannot build a PDF of exactly {size} bytes")


# --------------------------------------------------------------------------- OOXML

_ZIP_TIME = (2024, 3, 8, 9, 30, 0)  # fixed, so the package bytes are deterministic
_REL_NS = "http://schemas.openxmlformats.org/package/2006/relationships"
_OFFICE_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_THUMB_REL = "http://schemas.openxmlformats.org/package/2006/relationships/metadata/thumbnail"


def _xml_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _zip(parts: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, method in parts:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = method
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def _content_types(main: list[tuple[str, str]]) -> bytes:
    overrides = "".join(f'<Override PartName="{p}" ContentType="{t}"/>' for p, t in main)
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Default Extension="jpeg" ContentType="image/jpeg"/>' + overrides + "</Types>"
    ).encode()


def _root_rels(main_part: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        f'<Relationships xmlns="{_REL_NS}">'
        f'<Relationship Id="rId1" Type="{_OFFICE_REL}/officeDocument" Target="{main_part}"/>'
        f'<Relationship Id="rId2" Type="{_THUMB_REL}" Target="docProps/thumbnail.jpeg"/>'
        "</Relationships>"
    ).encode()


def _thumbnail(rng: random.Random, approx_size: int) -> bytes:
    return jpeg(rng, 32, 32, size=max(approx_size, 1200)).data


def docx(rng: random.Random, paragraphs: list[str], approx_size: int = 0) -> MediaFile:
    """A Word package; ``approx_size`` is reached with an embedded thumbnail JPEG."""
    body = "".join(f'<w:p><w:r><w:t xml:space="preserve">{_xml_escape(p)}</w:t></w:r></w:p>' for p in paragraphs)
    document = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        f"<w:body>{body}</w:body></w:document>"
    ).encode()
    main = "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"
    data = _zip(
        [
            ("[Content_Types].xml", _content_types([("/word/document.xml", main)]), zipfile.ZIP_DEFLATED),
            ("_rels/.rels", _root_rels("word/document.xml"), zipfile.ZIP_DEFLATED),
            ("word/document.xml", document, zipfile.ZIP_DEFLATED),
            ("docProps/thumbnail.jpeg", _thumbnail(rng, approx_size - 2000), zipfile.ZIP_STORED),
        ]
    )
    return MediaFile(data, "docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document")


def _xlsx_cell(ref: str, value: str | float) -> str:
    if isinstance(value, str):
        return f'<c r="{ref}" t="inlineStr"><is><t>{_xml_escape(value)}</t></is></c>'
    return f'<c r="{ref}"><v>{value}</v></c>'


def xlsx(rng: random.Random, rows: list[list[str | float]], approx_size: int = 0) -> MediaFile:
    """An Excel package with one sheet of inline strings and numbers."""
    sheet_rows = "".join(
        f'<row r="{r}">' + "".join(_xlsx_cell(f"{chr(65 + c)}{r}", v) for c, v in enumerate(row)) + "</row>"
        for r, row in enumerate(rows, start=1)
    )
    sheet = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        f"<sheetData>{sheet_rows}</sheetData></worksheet>"
    ).encode()
    workbook = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
        f'xmlns:r="{_OFFICE_REL}"><sheets><sheet name="报价" sheetId="1" r:id="rId1"/></sheets></workbook>'
    ).encode()
    workbook_rels = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        f'<Relationships xmlns="{_REL_NS}">'
        f'<Relationship Id="rId1" Type="{_OFFICE_REL}/worksheet" Target="worksheets/sheet1.xml"/>'
        "</Relationships>"
    ).encode()
    sml = "application/vnd.openxmlformats-officedocument.spreadsheetml"
    types = _content_types(
        [("/xl/workbook.xml", f"{sml}.sheet.main+xml"), ("/xl/worksheets/sheet1.xml", f"{sml}.worksheet+xml")]
    )
    data = _zip(
        [
            ("[Content_Types].xml", types, zipfile.ZIP_DEFLATED),
            ("_rels/.rels", _root_rels("xl/workbook.xml"), zipfile.ZIP_DEFLATED),
            ("xl/workbook.xml", workbook, zipfile.ZIP_DEFLATED),
            ("xl/_rels/workbook.xml.rels", workbook_rels, zipfile.ZIP_DEFLATED),
            ("xl/worksheets/sheet1.xml", sheet, zipfile.ZIP_DEFLATED),
            ("docProps/thumbnail.jpeg", _thumbnail(rng, approx_size - 2500), zipfile.ZIP_STORED),
        ]
    )
    return MediaFile(data, "xlsx", f"{sml}.sheet")


# --------------------------------------------------------------------------- plain


def text_file(content: str) -> MediaFile:
    return MediaFile(content.encode("utf-8"), "txt", "text/plain")


def binary(rng: random.Random, size: int) -> MediaFile:
    """Opaque bytes (always containing NULs when size allows): exercises C-string bugs."""
    data = bytearray(rng.randbytes(size))
    data[0::7] = bytes(len(data[0::7]))
    return MediaFile(bytes(data), "bin", "application/octet-stream")
