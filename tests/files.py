"""Files made in the test itself: images (with EXIF and a GPS position), PDFs with text."""

import io
import zlib

from PIL import Image

# EXIF tag numbers (Pillow's ExifTags): the GPS block, and Make for a plain camera field.
GPS_IFD = 0x8825
GPS_LATITUDE = 2
MAKE = 0x010F


def image_bytes(size=(40, 30), image_format="PNG", color=(200, 30, 30), exif=None):
    image = Image.new("RGB", size, color)
    output = io.BytesIO()
    options = {"exif": exif} if exif is not None else {}
    image.save(output, image_format, **options)
    return output.getvalue()


def jpeg_with_gps(size=(64, 48)):
    """A JPEG whose EXIF names a camera and a GPS latitude."""
    exif = Image.Exif()
    exif[MAKE] = "SpyCam"
    exif.get_ifd(GPS_IFD)[GPS_LATITUDE] = (48.0, 51.0, 24.0)
    data = image_bytes(size, "JPEG", exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as check:  # the fixture itself must carry what is to go
        assert check.getexif().get_ifd(GPS_IFD), "the test image has a GPS block"
    return data


def pdf_with_text(text="Rivers flow to the sea."):
    """A one-page PDF whose page shows `text` in Helvetica, with a correct cross-reference table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    return pdf_of(objects)


def compressed_pdf(pages):
    """A PDF of `pages` (each its content stream's bytes), every stream Flate-compressed, pages of
    the same bytes sharing one stream object: a few kilobytes can make a book."""
    streams = list(dict.fromkeys(pages))
    first_page = 4 + len(streams)
    kids = b" ".join(b"%d 0 R" % (first_page + number) for number in range(len(pages)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % len(pages),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for stream in streams:
        packed = zlib.compress(stream, 9)
        objects.append(b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed + b"\nendstream")
    for page in pages:
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            b"/Contents %d 0 R >>" % (4 + streams.index(page))
        )
    return pdf_of(objects)


def text_operators(text, repeat):
    """A content stream showing `text` `repeat` times, a line each."""
    return f"BT /F1 12 Tf 72 712 Td ({text}) Tj ET\n".encode("latin-1") * repeat


def pdf_of(objects):
    """A PDF file of `objects` (object 1 its catalog), with a correct cross-reference table."""
    output = io.BytesIO()
    output.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(output.tell())
        output.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = output.tell()
    output.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        output.write(b"%010d 00000 n \n" % offset)
    output.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return output.getvalue()
