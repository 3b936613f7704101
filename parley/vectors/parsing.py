"""A file's text, for a vector store: what `extract_text` reads from each kind of file.

Which files: OpenAI's file_search reads the formats its documentation lists (.c .cpp .cs .css .doc .docx .go
.html .java .js .json .md .pdf .php .pptx .py .rb .sh .tex .ts .txt) and refuses any other extension with
`unsupported_file`. Parley reads all of those except the legacy binary Word `.doc`, and a few more common text
formats beside them (SUPPORTED_EXTENSIONS); a file whose extension is none of these is read as text only when
its content type says it is text, and is otherwise `unsupported_file`, as OpenAI answers.

How each kind becomes text:
- text, Markdown, source code: the text itself, in UTF-8 (with or without a BOM) or UTF-16 (with a BOM, or
  without one where every other byte is NUL), as OpenAI accepts; else in the charset a content type or an HTML
  page's <meta> declares; else, for mostly-ASCII text, Windows-1252. Line ends become `\\n`; NULs and other
  control characters, which PostgreSQL cannot store in text and which mean nothing to a search, are dropped.
- HTML: its visible text (no script, style or head), with block elements as line breaks.
- JSON: the text as it is, once it parses (JSON Lines: each line).
- PDF: each page's text (pypdf), pages apart by a blank line; one encrypted with a password is refused.
- Word .docx and PowerPoint .pptx: their paragraphs' text, read from the zip's XML with the standard library.

Errors are `ParseError`, with the code a vector store file's `last_error` carries: `unsupported_file` for a kind
Parley does not read, `invalid_file` for a file of a supported kind whose content is not that kind (or has no
text). Hostile input is bounded: pages, decompressed sizes, time and the text's length have limits.
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import re
import time
import zipfile
from html.parser import HTMLParser
from xml.etree import ElementTree

# Extension -> how its file is read. OpenAI's list first, then other common text formats.
_OPENAI_KINDS = {
    ".c": "text",
    ".cpp": "text",
    ".cs": "text",
    ".css": "text",
    ".docx": "docx",
    ".go": "text",
    ".html": "html",
    ".java": "text",
    ".js": "text",
    ".json": "json",
    ".md": "text",
    ".pdf": "pdf",
    ".php": "text",
    ".pptx": "pptx",
    ".py": "text",
    ".rb": "text",
    ".sh": "text",
    ".tex": "text",
    ".ts": "text",
    ".txt": "text",
}
_MORE_KINDS = {
    ".htm": "html",
    ".xhtml": "html",
    ".jsonl": "jsonl",
    ".markdown": "text",
    ".mdx": "text",
    ".rst": "text",
    ".adoc": "text",
    ".org": "text",
    ".log": "text",
    ".csv": "text",
    ".tsv": "text",
    ".xml": "text",
    ".yaml": "text",
    ".yml": "text",
    ".toml": "text",
    ".ini": "text",
    ".cfg": "text",
    ".conf": "text",
    ".sql": "text",
    ".h": "text",
    ".hpp": "text",
    ".hh": "text",
    ".cc": "text",
    ".cxx": "text",
    ".m": "text",
    ".mm": "text",
    ".rs": "text",
    ".kt": "text",
    ".kts": "text",
    ".swift": "text",
    ".scala": "text",
    ".groovy": "text",
    ".gradle": "text",
    ".dart": "text",
    ".lua": "text",
    ".pl": "text",
    ".pm": "text",
    ".r": "text",
    ".jl": "text",
    ".ex": "text",
    ".exs": "text",
    ".erl": "text",
    ".hs": "text",
    ".ml": "text",
    ".clj": "text",
    ".zig": "text",
    ".nim": "text",
    ".jsx": "text",
    ".tsx": "text",
    ".mjs": "text",
    ".cjs": "text",
    ".vue": "text",
    ".svelte": "text",
    ".scss": "text",
    ".sass": "text",
    ".less": "text",
    ".bash": "text",
    ".zsh": "text",
    ".fish": "text",
    ".ps1": "text",
    ".bat": "text",
    ".proto": "text",
    ".graphql": "text",
    ".tf": "text",
    ".bib": "text",
}
_KINDS = {**_OPENAI_KINDS, **_MORE_KINDS}

SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(sorted(_KINDS))
"""Every extension `extract_text` reads (lowercase, with the dot)."""

OPENAI_EXTENSIONS: tuple[str, ...] = tuple(sorted(_OPENAI_KINDS))
"""The extensions that OpenAI's file_search documents and Parley reads (all of OpenAI's but `.doc`)."""

# Files that are text by name alone.
_TEXT_NAMES = {"makefile", "dockerfile", "readme", "license", "changelog", "gemfile", "rakefile", "procfile"}

# Content types that say how to read a file whose extension does not.
_CONTENT_TYPE_KINDS = {
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/json": "json",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "pptx",
    "application/xml": "text",
    "application/javascript": "text",
    "application/typescript": "text",
    "application/x-sh": "text",
    "application/x-yaml": "text",
    "application/yaml": "text",
    "application/toml": "text",
    "application/sql": "text",
}

# Bounds on hostile input.
MAX_TEXT_CHARS = 20_000_000
"""A file's text past this many characters is refused: OpenAI's limit is 5,000,000 tokens a file, and English
text runs about 4 characters a token."""
MAX_PDF_PAGES = 5_000
PDF_TIME_LIMIT_SECONDS = 120.0
HTML_TIME_LIMIT_SECONDS = 60.0
# A .docx or .pptx whose XML parts decompress past this is refused (a zip bomb is small and expands hugely).
MAX_ZIP_XML_BYTES = 128 * 1024 * 1024


class ParseError(Exception):
    """A file that gives no text: `code` is `unsupported_file` or `invalid_file` (a vector store file's
    `last_error.code`), `message` says why, for the person who uploaded it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def extract_text(data: bytes, filename: str, content_type: str | None = None) -> str:
    """The text of a file, read as its extension (else its content type) says.

    Raises ParseError: `unsupported_file` for a kind Parley does not read, `invalid_file` for content that is
    not what its kind says or that has no text.

    >>> extract_text(b"<p>Hello <b>world</b></p><script>x()</script>", "page.html")
    'Hello world'
    """
    kind = file_kind(filename, content_type)
    if kind == "pdf":
        text = _pdf_text(data)
    elif kind == "docx":
        text = _docx_text(data)
    elif kind == "pptx":
        text = _pptx_text(data)
    else:
        declared = _charset_of(content_type) or (_meta_charset(data) if kind == "html" else None)
        text = decode_text(data, declared)
        if kind == "html":
            text = html_text(text)
        elif kind == "json":
            _check_json(text)
        elif kind == "jsonl":
            _check_json_lines(text)
    text = text.strip()
    if not text:
        raise ParseError("invalid_file", "The file is empty: it has no text to index.")
    if len(text) > MAX_TEXT_CHARS:
        raise ParseError("invalid_file", f"The file's text is longer than {MAX_TEXT_CHARS:,} characters.")
    return text


def file_kind(filename: str, content_type: str | None = None) -> str:
    """How a file is read: 'text', 'html', 'json', 'jsonl', 'pdf', 'docx' or 'pptx'; ParseError
    (`unsupported_file`) for a file Parley does not read."""
    name = filename.rsplit("/", 1)[-1].lower()
    stem, dot, extension = name.rpartition(".")
    if dot and stem:
        kind = _KINDS.get("." + extension)
        if kind is not None:
            return kind
    elif name in _TEXT_NAMES:
        return "text"
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    kind = _CONTENT_TYPE_KINDS.get(media_type)
    if kind is None and media_type.startswith("text/"):
        kind = "text"
    if kind is not None:
        return kind
    if dot and stem and extension == "doc":
        raise ParseError(
            "unsupported_file", "Legacy Word documents (.doc) are not supported: save the file as .docx or .pdf."
        )
    # OpenAI's words, which clients match ("Files with extensions [.csv] are not supported for retrieval.").
    shown = f"Files with extensions [.{extension}]" if dot and stem else "Files without an extension"
    raise ParseError(
        "unsupported_file",
        f"{shown} are not supported for retrieval. Supported extensions: {', '.join(SUPPORTED_EXTENSIONS)}.",
    )


# --- text ---------------------------------------------------------------------------------------------------

# C0 controls and DEL but tab, line feed, form feed and carriage return: kept out of the text (PostgreSQL's text
# cannot hold NUL at all).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
# Past this share of control characters, bytes that decode are still not text.
_MAX_CONTROL_SHARE = 0.01
# Windows-1252 is a guess only for text that is mostly ASCII (a Western European text with some accents);
# text in another legacy encoding would decode to nonsense.
_MAX_LEGACY_HIGH_SHARE = 0.25


def decode_text(data: bytes, declared: str | None = None) -> str:
    """Bytes as text: UTF-8 (with or without a BOM), UTF-16 (with a BOM, or without one where every other byte
    is NUL), else mostly-ASCII Windows-1252; line ends as `\\n`, without control characters. ParseError
    (`invalid_file`) for bytes that are not text. A `declared` charset (a content type's, an HTML page's) is
    used for bytes that are not UTF-8: valid UTF-8 is almost never anything else, and declarations are often
    wrong."""
    text, controls = _CONTROL.subn("", _decode(data, declared))
    if controls > max(2, len(text) * _MAX_CONTROL_SHARE):
        raise ParseError("invalid_file", "The file is not text: it holds binary data.")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def clean_text(text: str) -> str:
    """Text from a document's structure (a PDF's pages, a .docx's runs) as the index keeps it: line ends as
    `\\n`, no control characters, no lone surrogates (which neither database can store)."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return _SURROGATE.sub("\ufffd", text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _decode(data: bytes, declared: str | None) -> str:
    try:
        if data.startswith(codecs.BOM_UTF8):
            return data[len(codecs.BOM_UTF8) :].decode("utf-8")
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and not data.startswith(codecs.BOM_UTF32_LE):
            return data.decode("utf-16")
        if b"\x00" in data and (encoding := _bomless_utf16(data)):
            return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ParseError("invalid_file", f"The file is not valid UTF-8 or UTF-16 text: {exc.reason}.") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if declared:
        try:
            return data.decode(declared)
        except UnicodeDecodeError:
            pass
    high = len(data) - len(data.translate(None, _HIGH_BYTES))
    if b"\x00" not in data and high <= len(data) * _MAX_LEGACY_HIGH_SHARE:
        try:
            return data.decode("cp1252")
        except UnicodeDecodeError:
            pass
    raise ParseError("invalid_file", "The file is not text in a supported encoding (UTF-8 or UTF-16).")


_HIGH_BYTES = bytes(range(0x80, 0x100))
# Text codecs that are not a document's character set: escapes and domain names.
_NOT_CHARSETS = {"unicode_escape", "raw_unicode_escape", "idna", "punycode", "utf_7"}
_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.IGNORECASE)


def _charset_of(content_type: str | None) -> str | None:
    """The charset a content type names (`text/plain; charset=shift_jis`), if Python knows it as one."""
    for parameter in (content_type or "").split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return _known_charset(value.strip().strip('"'))
    return None


def _meta_charset(data: bytes) -> str | None:
    """The charset an HTML page's <meta> declares near its start."""
    match = _META_CHARSET.search(data[:4096])
    return _known_charset(match.group(1).decode("ascii")) if match else None


def _known_charset(name: str) -> str | None:
    try:
        info = codecs.lookup(name)
    except LookupError:
        return None
    if not getattr(info, "_is_text_encoding", True):  # base64, rot13, zlib: bytes.decode refuses them
        return None
    return None if info.name.replace("-", "_") in _NOT_CHARSETS else info.name


def _bomless_utf16(data: bytes) -> str | None:
    """'utf-16-le' or 'utf-16-be' for bytes that look like mostly-Latin UTF-16 without a BOM: NUL in nearly
    every high byte of a pair and in almost no low byte."""
    if len(data) % 2 or len(data) < 4:
        return None
    sample = data[:65536]
    half = len(sample) // 2
    even = sample[0::2].count(0)
    odd = sample[1::2].count(0)
    if odd >= half * 0.7 and even <= half * 0.05:
        return "utf-16-le"
    if even >= half * 0.7 and odd <= half * 0.05:
        return "utf-16-be"
    return None


# --- HTML ---------------------------------------------------------------------------------------------------

# Elements whose content is never shown.
_HIDDEN = {"script", "style", "template", "head", "noscript", "svg", "math", "iframe"}
# Elements that end a paragraph, and those that end a line.
_PARAGRAPHS = {
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "table", "ul", "ol", "dl", "section",
    "article", "header", "footer", "aside", "nav", "main", "figure", "hr", "form", "fieldset", "details",
    "address",
}  # fmt: skip
_LINES = {"br", "div", "li", "tr", "dt", "dd", "caption", "figcaption", "summary", "legend", "option", "body"}
_CELLS = {"td", "th"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


_BREAKS = {1: "\t", 2: "\n", 3: "\n\n"}


class _TooSlow(Exception):
    pass


class _VisibleText(HTMLParser):
    def __init__(self, deadline: float) -> None:
        super().__init__(convert_charrefs=True)
        self.deadline = deadline
        self.parts: list[str] = []
        self.hidden: list[str] = []  # the open hidden elements, innermost last
        self.pre = 0
        self.title: list[str] = []
        self.in_title = False
        # The strongest break the elements since the last text asked for (a cell's tab, a line, a paragraph):
        # written once before the next text, so nested and empty blocks add no blank lines.
        self.pending = 0
        self.last_pre = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if time.monotonic() > self.deadline:
            raise _TooSlow
        if tag == "body" and "head" in self.hidden:
            self.hidden.clear()  # a head left open ends where the body starts, as browsers read it
        if tag in _VOID:
            if not self.hidden:
                self._break(tag)
            return
        if tag == "title":
            self.in_title = True
        if self.hidden or tag in _HIDDEN:
            self.hidden.append(tag)
            return
        if tag == "pre":
            self.pre += 1
        self._break(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self.hidden:
            self._break(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if self.hidden:
            # Close up to the matching open element; an end tag that matches none is ignored, as browsers do.
            if tag in self.hidden:
                while self.hidden and self.hidden.pop() != tag:
                    pass
            return
        if tag == "pre" and self.pre:
            self.pre -= 1
        self._break(tag)

    def handle_data(self, data: str) -> None:
        if time.monotonic() > self.deadline:
            raise _TooSlow
        if self.in_title:
            self.title.append(data)
        if self.hidden:
            return
        text = data if self.pre else re.sub(r"\s+", " ", data)
        if self.pending and not self.pre:
            text = text.lstrip()
        if not text:
            return
        if self.pending:
            if self.parts:
                if not self.last_pre:
                    self.parts[-1] = self.parts[-1].rstrip(" ")  # markup's space before a break
                self.parts.append(_BREAKS[self.pending])
            self.pending = 0
        self.parts.append(text)
        self.last_pre = bool(self.pre)

    def _break(self, tag: str) -> None:
        if tag in _PARAGRAPHS:
            self.pending = 3
        elif tag in _LINES:
            self.pending = max(self.pending, 2)
        elif tag in _CELLS:
            self.pending = max(self.pending, 1)


def html_text(html: str) -> str:
    """The visible text of an HTML document: no script, style or head (but its title, first), block elements
    as line breaks, runs of spaces as one outside <pre>."""
    # Python's HTMLParser (before 3.13.4) rescans to the end from every `<` of a tag left open at the end of
    # the document, a quadratic time: `<x ` 4,000 times took 3.5 s. Browsers drop such a tag; as no `>`
    # follows, each of those `<` is text here.
    last_close = html.rfind(">")
    if html.find("<", last_close + 1) >= 0:
        html = html[: last_close + 1] + html[last_close + 1 :].replace("<", "&lt;")
    parser = _VisibleText(time.monotonic() + HTML_TIME_LIMIT_SECONDS)
    try:
        parser.feed(html)
        parser.close()
    except _TooSlow:
        raise ParseError(
            "invalid_file", f"The HTML took longer than {HTML_TIME_LIMIT_SECONDS:.0f} s to read."
        ) from None
    body = "".join(parser.parts).strip()
    title = re.sub(r"\s+", " ", "".join(parser.title)).strip()
    if title and not body.startswith(title):
        return f"{title}\n\n{body}" if body else title
    return body


# --- JSON ---------------------------------------------------------------------------------------------------


def _check_json(text: str) -> None:
    try:
        json.loads(text)
    except RecursionError:
        pass  # nested deeper than Python's parser goes: still text to index
    except ValueError as exc:
        raise ParseError("invalid_file", f"The file is not valid JSON: {exc}.") from None


def _check_json_lines(text: str) -> None:
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                json.loads(line)
            except RecursionError:
                pass
            except ValueError as exc:
                raise ParseError("invalid_file", f"Line {number} of the file is not valid JSON: {exc}.") from None


# --- PDF ----------------------------------------------------------------------------------------------------


def _pdf_text(data: bytes) -> str:
    # pypdf is imported here: only PDFs need it, and it takes a while to import.
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError

    if b"%PDF-" not in data[:1024]:  # where the PDF standard lets its header be
        raise ParseError("invalid_file", "The file is not a PDF.")
    # pypdf warns through logging of every flaw it works around in a broken file: the uploader's problem, which
    # the file's last_error tells, not the operator's.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise ParseError("invalid_file", "The PDF is encrypted with a password.")
        pages = reader.pages
        count = len(pages)
    except ParseError:
        raise
    except FileNotDecryptedError:
        raise ParseError("invalid_file", "The PDF is encrypted with a password.") from None
    except Exception as exc:  # pypdf raises many kinds of error on a broken file
        raise ParseError("invalid_file", f"The PDF cannot be read: {_reason(exc)}.") from None
    if count > MAX_PDF_PAGES:
        raise ParseError("invalid_file", f"The PDF has {count:,} pages; at most {MAX_PDF_PAGES:,} are read.")
    deadline = time.monotonic() + PDF_TIME_LIMIT_SECONDS
    texts: list[str] = []
    size = 0
    failure: str | None = None
    for number in range(count):
        try:
            text = clean_text(pages[number].extract_text()).strip()
        except Exception as exc:
            # A damaged page loses its own text, not the document's (as a PDF viewer still shows the others).
            failure = failure or f"Page {number + 1} of the PDF cannot be read: {_reason(exc)}."
            text = ""
        if text:
            texts.append(text)
        size += len(text)
        if size > MAX_TEXT_CHARS:
            raise ParseError("invalid_file", f"The file's text is longer than {MAX_TEXT_CHARS:,} characters.")
        if time.monotonic() > deadline:
            raise ParseError("invalid_file", f"The PDF took longer than {PDF_TIME_LIMIT_SECONDS:.0f} s to read.")
    if not texts:
        raise ParseError(
            "invalid_file", failure or "The PDF has no text (a scanned document needs text recognition first)."
        )
    return "\n\n".join(texts)


def _reason(exc: BaseException) -> str:
    return str(exc).strip().rstrip(".") or type(exc).__name__


# --- Office Open XML (.docx, .pptx) --------------------------------------------------------------------------

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_A = "{http://schemas.openxmlformats.org/drawingml/2006/main}"


def _open_zip(data: bytes, what: str) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ParseError("invalid_file", f"The file is not a {what} document: {_reason(exc)}.") from None
    # zipfile reads a member no further than the size its directory declares, so the declared sizes bound
    # what inflating can produce, whatever the compressed data would expand to.
    if sum(info.file_size for info in archive.infolist() if info.filename.endswith(".xml")) > MAX_ZIP_XML_BYTES:
        raise ParseError("invalid_file", f"The {what} document expands past {MAX_ZIP_XML_BYTES:,} bytes.")
    return archive


def _paragraphs(archive: zipfile.ZipFile, name: str, what: str, ns: str) -> list[str]:
    """The text of each paragraph (`p`) of one XML part, in the order each ends (a paragraph nested in another,
    as in a text box, is its own and comes first), read as a stream: each paragraph's elements are dropped
    once read, so a large document never stands whole in memory."""
    paragraph_tag, text_tag, tab_tag, breaks = ns + "p", ns + "t", ns + "tab", (ns + "br", ns + "cr")
    lines = []
    try:
        with archive.open(name) as part:
            for _, element in ElementTree.iterparse(part, events=("end",)):
                if element.tag != paragraph_tag:
                    continue
                pieces = []
                # Nested paragraphs were read and cleared at their own end; iter() is not recursive.
                for node in element.iter():
                    if node.tag == text_tag and node.text:
                        pieces.append(node.text)
                    elif node.tag == tab_tag:
                        pieces.append("\t")
                    elif node.tag in breaks:
                        pieces.append("\n")
                element.clear()
                lines.append(clean_text("".join(pieces)).strip())
    except KeyError:
        raise ParseError("invalid_file", f"The file is not a {what} document: it has no {name}.") from None
    except Exception as exc:  # zlib, zipfile and expat errors on a broken file
        raise ParseError("invalid_file", f"The {what} document cannot be read: {_reason(exc)}.") from None
    return lines


def _docx_text(data: bytes) -> str:
    archive = _open_zip(data, "Word")
    lines = _paragraphs(archive, "word/document.xml", "Word", _W)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def _pptx_text(data: bytes) -> str:
    archive = _open_zip(data, "PowerPoint")
    slides = []
    for name in archive.namelist():
        match = re.fullmatch(r"ppt/slides/slide(\d+)\.xml", name)
        if match:
            slides.append((int(match.group(1)), name))
    if not slides:
        raise ParseError("invalid_file", "The file is not a PowerPoint document: it has no slides.")
    texts = []
    for _, name in sorted(slides):
        lines = [line for line in _paragraphs(archive, name, "PowerPoint", _A) if line]
        texts.append("\n".join(lines))
    return "\n\n".join(t for t in texts if t)
