"""parley.vectors.parsing: the text a vector store indexes from each kind of file, and the errors a file that
gives none ends with (a vector store file's `last_error`: unsupported_file, invalid_file).

Pure functions over bytes, so these are unit tests; ingestion over HTTP is tested in tests/test_vector_stores.py.
PDFs, .docx and .pptx files are written here, byte by byte, rather than kept as binary fixtures.
"""

from __future__ import annotations

import codecs
import io
import json
import time
import zipfile

import pytest
from pypdf import PdfReader, PdfWriter

from parley.vectors import parsing
from parley.vectors.parsing import OPENAI_EXTENSIONS, SUPPORTED_EXTENSIONS, ParseError, extract_text, file_kind


def make_pdf(pages: list[str | None]) -> bytes:
    """A valid PDF whose pages show these texts in Helvetica (None: a page with no text)."""
    objects: list[bytes] = []  # object n is objects[n - 1]
    page_count = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(page_count))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {page_count} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    for i, text in enumerate(pages):
        lines = [] if text is None else text.split("\n")
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
        for line in lines:
            escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({escaped}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("cp1252")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def encrypted(pdf: bytes, user_password: str, owner_password: str = "owner") -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password, owner_password, algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx(paragraphs: list[str]) -> bytes:
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    body = "".join(
        f'<w:p><w:r><w:t xml:space="preserve">{text.split("|")[0]}</w:t></w:r>'
        + "".join(f"<w:r><w:tab/><w:t>{part}</w:t></w:r>" for part in text.split("|")[1:])
        + "</w:p>"
        for text in paragraphs
    )
    document = f'<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="{w}"><w:body>{body}</w:body></w:document>'
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", document)
    return out.getvalue()


def make_pptx(slides: list[list[str]]) -> bytes:
    a = "http://schemas.openxmlformats.org/drawingml/2006/main"
    p = "http://schemas.openxmlformats.org/presentationml/2006/main"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        # Written out of order, and past 9, so that slide10 must sort after slide2.
        for number in reversed(range(1, len(slides) + 1)):
            paragraphs = "".join(f"<a:p><a:r><a:t>{line}</a:t></a:r></a:p>" for line in slides[number - 1])
            archive.writestr(
                f"ppt/slides/slide{number}.xml",
                f'<p:sld xmlns:p="{p}" xmlns:a="{a}"><p:cSld><p:spTree><p:sp><p:txBody>{paragraphs}'
                "</p:txBody></p:sp></p:spTree></p:cSld></p:sld>",
            )
    return out.getvalue()


def error_of(data: bytes, filename: str, content_type: str | None = None) -> ParseError:
    with pytest.raises(ParseError) as caught:
        extract_text(data, filename, content_type)
    return caught.value


# --- which files ----------------------------------------------------------------------------------------------


def test_every_extension_openai_documents_but_legacy_doc_is_supported() -> None:
    documented = {
        ".c", ".cpp", ".cs", ".css", ".docx", ".go", ".html", ".java", ".js", ".json", ".md", ".pdf", ".php",
        ".pptx", ".py", ".rb", ".sh", ".tex", ".ts", ".txt",
    }  # fmt: skip
    assert set(OPENAI_EXTENSIONS) == documented
    assert documented <= set(SUPPORTED_EXTENSIONS)
    assert ".doc" not in SUPPORTED_EXTENSIONS
    assert list(SUPPORTED_EXTENSIONS) == sorted(SUPPORTED_EXTENSIONS)
    assert all(ext == ext.lower() and ext.startswith(".") for ext in SUPPORTED_EXTENSIONS)


@pytest.mark.parametrize("filename", ["main.c", "Program.cs", "app.TS", "dir/deep/run.sh", "notes.tex", "x.rs"])
def test_source_code_is_read_as_its_text(filename: str) -> None:
    source = 'int main(void) {\r\n    return puts("hi");\r\n}\r\n'
    assert extract_text(source.encode(), filename) == 'int main(void) {\n    return puts("hi");\n}'


def test_an_unknown_extension_is_unsupported_in_openais_words() -> None:
    error = error_of(b"a,b\n1,2\n", "table.xyz")
    assert error.code == "unsupported_file"
    assert error.message.startswith("Files with extensions [.xyz] are not supported for retrieval.")
    assert ".pdf" in error.message


def test_an_unknown_extension_is_read_as_text_when_the_content_type_says_text() -> None:
    assert extract_text(b"plain words", "notes.weird", "text/plain; charset=utf-8") == "plain words"
    assert extract_text(b"<p>shown</p><script>hidden()</script>", "page.weird", "text/html") == "shown"
    assert extract_text(b"<p>not markup</p>", "page.weird", "TEXT/X-Anything") == "<p>not markup</p>"


def test_the_extension_decides_over_the_content_type() -> None:
    assert extract_text(b"<b>bold</b>", "page.txt", "text/html") == "<b>bold</b>"
    assert error_of(b"plain words", "notes.weird", "application/octet-stream").code == "unsupported_file"


def test_a_file_without_an_extension_is_text_by_a_known_name_or_its_content_type() -> None:
    assert extract_text(b"all:\n\tcc main.c\n", "Makefile") == "all:\n\tcc main.c"
    assert extract_text(b"FROM debian\n", "project/Dockerfile") == "FROM debian"
    assert extract_text(b"words", "notes", "text/plain") == "words"
    error = error_of(b"words", "notes")
    assert error.code == "unsupported_file"
    assert error.message.startswith("Files without an extension are not supported for retrieval.")
    assert error_of(b"words", ".bashrc").code == "unsupported_file"


def test_a_legacy_word_document_is_unsupported_with_a_way_out() -> None:
    error = error_of(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504), "report.doc")
    assert error.code == "unsupported_file"
    assert ".docx" in error.message


def test_file_kind_answers_from_the_name_alone() -> None:
    assert file_kind("a.PDF") == "pdf"
    assert file_kind("a.htm") == "html"
    assert file_kind("a.jsonl") == "jsonl"
    assert file_kind("a.bin", "application/pdf") == "pdf"
    with pytest.raises(ParseError) as caught:
        file_kind("archive.zip")
    assert caught.value.code == "unsupported_file"


# --- encodings ------------------------------------------------------------------------------------------------

TEXT = "Grüße, naïve café — 東京 🚀\nsecond line"


@pytest.mark.parametrize(
    "data",
    [
        TEXT.encode("utf-8"),
        codecs.BOM_UTF8 + TEXT.encode("utf-8"),
        codecs.BOM_UTF16_LE + TEXT.encode("utf-16-le"),
        codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be"),
        TEXT.encode("utf-16"),  # Python's: a BOM, then the machine's order
    ],
    ids=["utf-8", "utf-8-bom", "utf-16-le-bom", "utf-16-be-bom", "utf-16"],
)
def test_text_in_utf8_or_utf16_is_decoded(data: bytes) -> None:
    assert extract_text(data, "notes.txt") == TEXT


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_bom_is_recognised_by_its_nul_bytes(encoding: str) -> None:
    text = "Plain English text, written by Windows without a byte order mark.\nÀ bientôt."
    assert extract_text(text.encode(encoding), "notes.txt") == text


def test_mostly_ascii_windows_1252_text_is_read() -> None:
    text = "Le café coûte 3 € à Genève, dit-il. “Vraiment ?” The rest of this note is in plain English words."
    assert extract_text(text.encode("cp1252"), "notes.txt") == text


def test_line_ends_become_newlines_and_control_characters_are_dropped() -> None:
    # A few stray control characters in a long text: a text still (past 1 in 100 it is binary data).
    words = " words" * 100
    data = b"one\r\ntwo\rthree\nfour\x00\x07 five\x1b\tsix\x0cseven" + words.encode()
    assert extract_text(data, "notes.txt") == "one\ntwo\nthree\nfour five\tsix\x0cseven" + words


def test_a_declared_charset_reads_text_that_is_not_utf8() -> None:
    text = "東京タワーは日本の電波塔です。"
    data = text.encode("shift_jis")
    assert extract_text(data, "notes.txt", "text/plain; charset=Shift_JIS") == text
    page = b'<html><head><meta charset="shift_jis"><title>x</title></head><body><p>' + data + b"</p></body></html>"
    assert extract_text(page, "page.html") == "x\n\n" + text
    old_style = b'<meta http-equiv="Content-Type" content="text/html; charset=euc-jp"><p>' + text.encode("euc-jp")
    assert extract_text(old_style, "page.html") == text


def test_valid_utf8_wins_over_a_wrong_declaration() -> None:
    assert extract_text("café".encode(), "notes.txt", "text/plain; charset=iso-8859-1") == "café"


@pytest.mark.parametrize("charset", ["unicode_escape", "base64", "rot13", "no-such-charset", ""])
def test_a_declared_charset_that_is_no_charset_is_ignored(charset: str) -> None:
    error = error_of("東京".encode("shift_jis") * 20, "notes.txt", f"text/plain; charset={charset}")
    assert error.code == "invalid_file"


@pytest.mark.parametrize(
    "data",
    [
        bytes(range(256)) * 8,  # every byte value
        b"\x89PNG\r\n\x1a\n" + bytes(200),  # an image renamed .txt
        b"ELF" + b"\x00\x01\x02\x03" * 100,
        "東京タワーは日本の電波塔です。".encode("shift_jis"),  # a legacy encoding that is not mostly ASCII
        codecs.BOM_UTF8 + b"\xff\xfe broken",
        codecs.BOM_UTF16_LE + b"\x00\xd8a\x00",  # a lone surrogate
    ],
    ids=["all-bytes", "png", "elf", "shift-jis", "bad-utf8-after-bom", "lone-surrogate"],
)
def test_bytes_that_are_not_text_are_an_invalid_file(data: bytes) -> None:
    error = error_of(data, "notes.txt")
    assert error.code == "invalid_file"
    assert "text" in error.message


@pytest.mark.parametrize("data", [b"", b"   \n\t\r\n ", codecs.BOM_UTF8, b"\x00\x00"])
def test_an_empty_file_is_an_invalid_file(data: bytes) -> None:
    error = error_of(data, "notes.md")
    assert error.code == "invalid_file"
    assert "empty" in error.message


# --- HTML -----------------------------------------------------------------------------------------------------

PAGE = b"""<!DOCTYPE html>
<html><head><title>The  Title</title><meta charset="utf-8"><style>p { color: red }</style>
<script>var hidden = "<p>not text</p>";</script></head>
<body>
  <nav><a href="/">Home</a></nav>
  <h1>Heading &amp; more</h1>
  <p>First   paragraph
     continues <b>bold</b> here.<br>After a break.</p>
  <div><div><p>Nested</p></div></div>
  <ul><li>one</li><li>two</li></ul>
  <table><tr><th>a</th><td>b</td></tr><tr><td>c</td><td>d</td></tr></table>
  <pre>  keep
    spacing</pre>
  <template><p>template text</p></template><noscript>enable js</noscript>
  <svg><text>drawing</text></svg>
  <p>caf&eacute; &#x1F680; &lt;tag&gt;</p>
</body></html>"""


def test_html_is_its_visible_text_with_blocks_as_line_breaks() -> None:
    assert extract_text(PAGE, "page.html") == (
        "The Title\n\n"
        "Home\n\n"
        "Heading & more\n\n"
        "First paragraph continues bold here.\n"
        "After a break.\n\n"
        "Nested\n\n"
        "one\ntwo\n\n"
        "a\tb\nc\td\n\n"
        "  keep\n    spacing\n\n"
        "café 🚀 <tag>"
    )


def test_html_with_a_head_left_open_still_shows_its_body() -> None:
    assert extract_text(b"<html><head><title>T</title><body><p>Body text</p>", "page.htm") == "T\n\nBody text"


def test_html_with_only_scripts_is_empty() -> None:
    error = error_of(b"<html><script>document.write('x')</script><style>a{}</style></html>", "app.html")
    assert (error.code, "empty" in error.message) == ("invalid_file", True)


def test_html_with_a_tag_left_open_at_its_end_is_read_in_linear_time() -> None:
    # Python's HTMLParser took 3.5 s over 4,000 of these, growing with the square of their number.
    started = time.monotonic()
    assert extract_text(b"<p>start</p>" + b"<x " * 50_000, "open.html").startswith("start\n\n<x <x")
    assert time.monotonic() - started < 2


def test_html_that_takes_too_long_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parsing, "HTML_TIME_LIMIT_SECONDS", 0.0)
    error = error_of(b"<p>one</p><p>two</p>", "page.html")
    assert (error.code, error.message) == ("invalid_file", "The HTML took longer than 0 s to read.")


def test_broken_html_is_still_read() -> None:
    assert extract_text(b"<p>unclosed <b>bold <i>both</p> after </div></span> <", "page.html") == (
        "unclosed bold both\n\nafter\n<"
    )


# --- JSON -----------------------------------------------------------------------------------------------------


def test_json_is_kept_as_its_text_once_it_parses() -> None:
    data = b'{\n  "name": "Parley",\n  "tags": ["a", "b"]\n}\n'
    assert extract_text(data, "data.json") == data.decode().strip()


def test_invalid_json_is_an_invalid_file() -> None:
    error = error_of(b'{"name": "Parley",}', "data.json")
    assert error.code == "invalid_file"
    assert error.message.startswith("The file is not valid JSON")


def test_json_nested_deeper_than_the_parser_goes_is_still_text() -> None:
    data = b"[" * 100_000 + b"]" * 100_000
    assert extract_text(data, "deep.json") == data.decode()


def test_json_lines_are_checked_line_by_line() -> None:
    assert extract_text(b'{"a": 1}\n\n{"b": 2}\n', "rows.jsonl") == '{"a": 1}\n\n{"b": 2}'
    error = error_of(b'{"a": 1}\n{"b": \n', "rows.jsonl")
    assert error.code == "invalid_file"
    assert error.message.startswith("Line 2 of the file is not valid JSON")


# --- PDF ------------------------------------------------------------------------------------------------------


def test_a_pdfs_text_is_its_pages_text_apart_by_blank_lines() -> None:
    pdf = make_pdf(["Hello from page one.\nSecond line (with parens).", None, "Page three says goodbye."])
    assert extract_text(pdf, "doc.pdf") == (
        "Hello from page one.\nSecond line (with parens).\n\nPage three says goodbye."
    )


def test_a_pdf_is_read_whatever_its_name_says_when_the_content_type_is_pdf() -> None:
    assert extract_text(make_pdf(["By content type."]), "download", "application/pdf") == "By content type."


def test_a_pdf_with_no_text_is_an_invalid_file_that_says_so() -> None:
    error = error_of(make_pdf([None, None]), "scan.pdf")
    assert error.code == "invalid_file"
    assert "no text" in error.message


def test_a_pdf_locked_with_a_password_is_an_invalid_file() -> None:
    error = error_of(encrypted(make_pdf(["Secret text."]), "hunter2"), "locked.pdf")
    assert error.code == "invalid_file"
    assert "encrypted" in error.message


def test_a_pdf_encrypted_with_only_an_owner_password_is_read() -> None:
    assert extract_text(encrypted(make_pdf(["Readable by anyone."]), ""), "restricted.pdf") == "Readable by anyone."


@pytest.mark.parametrize(
    "data",
    [
        b"this is not a pdf at all",
        b"%PDF-1.4\n" + bytes(range(256)) * 4,
        make_pdf(["Cut short in the middle of its objects."])[:150],
        make_pdf(["x"]).replace(b"/Kids [4 0 R]", b"/Kids 7"),
        make_pdf(["x"]).replace(b"/Kids [4 0 R]", b"/Kids [2 0 R]"),
        b"%PDF-1.7\n%%EOF",
    ],
    ids=["not-a-pdf", "junk-after-header", "truncated", "kids-not-an-array", "cyclic-pages", "header-only"],
)
def test_a_broken_pdf_is_an_invalid_file(data: bytes) -> None:
    assert error_of(data, "broken.pdf").code == "invalid_file"


def test_a_pdf_with_a_broken_xref_table_is_still_read() -> None:
    # pypdf rebuilds the table by scanning the file, as PDF readers do.
    pdf = make_pdf(["Recovered text."])
    start = pdf.rindex(b"startxref\n") + len(b"startxref\n")
    assert extract_text(pdf[:start] + b"999\n%%EOF\n", "moved.pdf") == "Recovered text."


def test_a_pdfs_damaged_page_loses_only_its_own_text() -> None:
    pdf = make_pdf(["Good page one.", "Damaged page.", "Good page three."])
    broken = pdf.replace(b"(Damaged page.) Tj", b"(Damaged page.) Tj <<<<[[[(((")
    assert extract_text(broken, "damaged.pdf") == "Good page one.\n\nGood page three."
    only_damaged = make_pdf(["Damaged page."]).replace(b"(Damaged page.) Tj", b"(Damaged page.) Tj <<<<[[[(((")
    error = error_of(only_damaged, "damaged.pdf")
    assert error.code == "invalid_file"
    assert error.message.startswith("Page 1 of the PDF cannot be read")


def test_a_pdf_past_the_page_limit_is_refused_before_its_pages_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parsing, "MAX_PDF_PAGES", 3)
    error = error_of(make_pdf(["a", "b", "c", "d"]), "long.pdf")
    assert (error.code, error.message) == ("invalid_file", "The PDF has 4 pages; at most 3 are read.")


def test_a_pdf_that_takes_too_long_is_stopped_between_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parsing, "PDF_TIME_LIMIT_SECONDS", 0.0)
    started = time.monotonic()
    error = error_of(make_pdf([f"page {n}" for n in range(50)]), "slow.pdf")
    assert error.code == "invalid_file"
    assert "took longer than" in error.message
    assert time.monotonic() - started < 5


# --- Office Open XML ------------------------------------------------------------------------------------------


def test_a_word_documents_text_is_its_paragraphs() -> None:
    docx = make_docx(["Title of the report", "", "First paragraph.", "Name|Value"])
    assert extract_text(docx, "report.docx") == "Title of the report\n\nFirst paragraph.\nName\tValue"


def test_a_paragraph_in_a_text_box_inside_another_is_its_own() -> None:
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    document = (
        f'<w:document xmlns:w="{w}"><w:body><w:p><w:r><w:t>Outer before </w:t></w:r>'
        "<w:r><w:txbxContent><w:p><w:r><w:t>In the box</w:t></w:r></w:p></w:txbxContent></w:r>"
        "<w:r><w:t>outer after.</w:t></w:r></w:p><w:p><w:r><w:t>Next.</w:t></w:r></w:p></w:body></w:document>"
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("word/document.xml", document)
    assert extract_text(out.getvalue(), "boxed.docx") == "In the box\nOuter before outer after.\nNext."


def test_a_presentations_text_is_its_slides_in_order() -> None:
    slides = [[f"Slide {n} title", f"point {n}"] for n in range(1, 12)]
    text = extract_text(make_pptx(slides), "deck.pptx")
    assert text.split("\n\n")[:3] == ["Slide 1 title\npoint 1", "Slide 2 title\npoint 2", "Slide 3 title\npoint 3"]
    assert text.endswith("Slide 10 title\npoint 10\n\nSlide 11 title\npoint 11")


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (b"PK\x03\x04 not really a zip", "report.docx"),
        (make_pptx([["x"]]), "report.docx"),  # a zip without word/document.xml
        (make_docx(["x"]), "deck.pptx"),
        (make_docx(["x"]).replace(b"word/document.xml", b"word/documenX.xml"), "report.docx"),
    ],
    ids=["not-a-zip", "pptx-named-docx", "docx-named-pptx", "renamed-part"],
)
def test_a_broken_office_document_is_an_invalid_file(data: bytes, filename: str) -> None:
    assert error_of(data, filename).code == "invalid_file"


def test_an_office_document_that_expands_hugely_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parsing, "MAX_ZIP_XML_BYTES", 100_000)
    docx = make_docx(["a" * 200_000])
    assert len(docx) < 5_000  # the zip bomb's shape: small, and large once inflated
    error = error_of(docx, "bomb.docx")
    assert error.code == "invalid_file"
    assert "expands past" in error.message


def test_xml_entities_are_not_expanded_without_bound() -> None:
    # A "billion laughs": expat refuses the amplification, and the document is an invalid file.
    entities = '<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8)
    )
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    document = f'<!DOCTYPE d [{entities}]><w:document xmlns:w="{w}"><w:p><w:r><w:t>&i;</w:t></w:r></w:p></w:document>'
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("word/document.xml", document)
    assert error_of(out.getvalue(), "laughs.docx").code == "invalid_file"


def test_a_huge_text_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parsing, "MAX_TEXT_CHARS", 1000)
    error = error_of(b"word " * 300, "big.txt")
    assert (error.code, error.message) == ("invalid_file", "The file's text is longer than 1,000 characters.")


def test_parse_error_carries_its_code_and_message() -> None:
    error = ParseError("invalid_file", "why")
    assert (error.code, error.message, str(error)) == ("invalid_file", "why", "why")
    assert json.dumps({"code": error.code, "message": error.message})
