"""Conformance: every request the transport builds, checked against Customer.io's own
description of the Track API.

The description is the OpenAPI document Customer.io's docs serve as ``journeys-track.json``;
``tests/fixtures/customerio_track_openapi.json`` keeps, unchanged, the six operations the app
uses and the components they reference (source, date and refresh: ``tests/fixtures/README.md``).

Requests are captured on the wire by ``FakeCustomerIO`` (so the path is what urllib3 and
requests really send) or built directly with :func:`batch_item`, then checked:

* method and path: the method and the path template match one operation of the description;
  a path parameter is exactly one segment (RFC 3986 ``pchar``s and ``%XX`` escapes, never
  ``.`` or ``..``) and decodes to the customer id that was sent;
* body: the JSON body validates against the operation's ``requestBody`` schema (for
  ``/api/v2/batch`` the whole ``{"batch": [...]}``, then each item on its own, so a failure
  names the item); an operation without a ``requestBody`` gets no body.

The document is OpenAPI **3.1.0**: its schemas are JSON Schema 2020-12 (the OAS base dialect
adds only annotations such as ``discriminator`` and ``example``, which a 2020-12 validator
ignores), so they are validated with ``Draft202012Validator`` and ``format`` is asserted where
jsonschema knows the format (``email``). There is no OpenAPI 3.0 ``nullable`` in it, and
:func:`test_the_fixture_is_the_openapi_3_1_subset` fails if a refresh brings one in.

Where the description and Customer.io's real behaviour are known to differ, the difference is
an explicit, sourced entry of :data:`KNOWN_DIFFERENCES` (or :data:`PATH_IDENTIFIER_DEFECT`),
and :func:`test_the_known_differences_are_still_in_the_description` proves each one is still
needed. Nothing else is loosened.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, unquote
from uuid import UUID

import pytest
from django.utils.translation import gettext_lazy
from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from django_cio_reliable import validation
from django_cio_reliable.exceptions import DeliveryError
from django_cio_reliable.testing import FakeCustomerIO, ReceivedRequest
from django_cio_reliable.transport import BatchItem, Kind, Transport, batch_item
from tests.conftest import API_KEY, SITE_ID

FIXTURE: Final = Path(__file__).resolve().parent / "fixtures" / "customerio_track_openapi.json"
DESCRIPTION: Final[dict[str, Any]] = json.loads(FIXTURE.read_text(encoding="utf-8"))
BASE_URI: Final = "urn:customerio:journeys-track.json"
REGISTRY: Final[Registry[Any]] = Registry().with_resource(
    BASE_URI, DRAFT202012.create_resource(DESCRIPTION)
)
_HTTP_METHODS: Final = ("get", "put", "post", "delete", "patch", "head", "options", "trace")

EVENT_ID: Final = "01HZX3K9T1V8Q2W4E6R8T0Y2V4"
EVENT_ID_2: Final = "01HZX3K9T1V8Q2W4E6R8T0Y2V5"
TIMESTAMP: Final = 1_700_000_000


# --------------------------------------------------------------------------- the description


def pointer(*parts: str) -> str:
    """A JSON pointer (RFC 6901) to ``parts`` inside the description."""
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def resolve(ref: str) -> Any:
    """The node a ``#/...`` reference of the description points at."""
    return REGISTRY.resolver(base_uri=BASE_URI).lookup(ref).contents


@functools.cache
def validator(json_pointer: str) -> Draft202012Validator:
    """A 2020-12 validator for the schema at ``json_pointer``; its ``$ref``s resolve in the
    description (through :data:`REGISTRY`), and ``format`` is asserted."""
    return Draft202012Validator(
        {"$ref": f"{BASE_URI}#{quote(json_pointer, safe='/')}"},
        registry=REGISTRY,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


@dataclass(frozen=True)
class Parameter:
    """One parameter of an operation (path-level ones included), ``$ref`` resolved."""

    name: str
    location: str  # "path", "query"...
    schema: str  # JSON pointer to its schema


def _parameters(declared: Sequence[Mapping[str, Any]], *where: str) -> list[Parameter]:
    found = []
    for index, parameter in enumerate(declared):
        if "$ref" in parameter:
            at = parameter["$ref"].removeprefix("#")
            parameter = resolve(parameter["$ref"])
        else:
            at = pointer(*where, "parameters", str(index))
        found.append(Parameter(parameter["name"], parameter["in"], f"{at}/schema"))
    return found


@dataclass(frozen=True)
class SpecOperation:
    """One operation of the description."""

    method: str
    template: str
    operation_id: str
    parameters: tuple[Parameter, ...]
    body_schema: str | None  # JSON pointer to the application/json requestBody schema

    @property
    def name(self) -> str:
        return f"{self.method} {self.template} ({self.operation_id})"


def _operations() -> tuple[SpecOperation, ...]:
    found = []
    for template, item in DESCRIPTION["paths"].items():
        shared = _parameters(item.get("parameters", []), "paths", template)
        for method in _HTTP_METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            own = _parameters(operation.get("parameters", []), "paths", template, method)
            body = None
            if "requestBody" in operation:
                assert set(operation["requestBody"]["content"]) == {"application/json"}
                body = pointer(
                    "paths",
                    template,
                    method,
                    "requestBody",
                    "content",
                    "application/json",
                    "schema",
                )
            found.append(
                SpecOperation(
                    method=method.upper(),
                    template=template,
                    operation_id=operation["operationId"],
                    parameters=tuple(shared + own),
                    body_schema=body,
                )
            )
    return tuple(found)


OPERATIONS: Final = _operations()
BATCH_BODY: Final = pointer(
    "paths", "/api/v2/batch", "post", "requestBody", "content", "application/json", "schema"
)
BATCH_ITEM: Final = BATCH_BODY + pointer("properties", "batch", "items")
IDENTIFY_BODY: Final = pointer(
    "paths",
    "/api/v1/customers/{identifier}",
    "put",
    "requestBody",
    "content",
    "application/json",
    "schema",
)


def _person_alternatives() -> dict[str, str]:
    """``action`` → ``$ref`` of the batch's "Person" alternative for it (identify →
    ``identify_person``...), read from the description: used to explain a failing item."""
    person = resolve(f"#{BATCH_ITEM}")["anyOf"][0]
    assert person["title"] == "Person"
    found: dict[str, str] = {}
    for alternative in person["anyOf"]:
        for part in resolve(alternative["$ref"]).get("allOf", []):
            for action in part.get("properties", {}).get("action", {}).get("enum", []):
                found[action] = alternative["$ref"]
    return found


PERSON_ALTERNATIVES: Final = _person_alternatives()


# --------------------------------------------------------------------------- known differences


@dataclass(frozen=True)
class KnownDifference:
    """A place where the description refuses what Customer.io is documented to accept.

    ``applies`` gets a validation error of an operation's body and says whether it is this
    difference; only such errors are forgiven, each one recorded on the verdict.
    """

    operation_id: str
    what: str
    source: str
    applies: Callable[[ValidationError], bool]


def _v1_attribute_value(error: ValidationError, *types: type) -> bool:
    """An error about one top-level attribute of a v1 identify body, from the body schema's
    ``additionalProperties`` (``oneOf`` string / integer / boolean), for a value of ``types``."""
    schema = resolve(f"#{IDENTIFY_BODY}")["additionalProperties"]
    return (
        error.validator == "oneOf"
        and error.schema == schema
        and len(error.absolute_path) == 1
        and isinstance(error.instance, types)
        and not isinstance(error.instance, bool)
    )


KNOWN_DIFFERENCES: Final = (
    KnownDifference(
        operation_id="identify",
        what=(
            "a v1 attribute value that is a number with a fraction (19.99, Decimal('42.50')): "
            "the description's additionalProperties allow only string, integer or boolean"
        ),
        source=(
            "Customer.io docs, 'Manage customer attributes' (docs.customer.io/journeys/"
            "attributes): 'Attributes can be a string, boolean or a number'; the same "
            "description's v2 identify_person takes any value"
        ),
        applies=lambda error: _v1_attribute_value(error, float),
    ),
    KnownDifference(
        operation_id="identify",
        what=(
            "a v1 attribute value that is a JSON object or array (nested attributes): the "
            "description's additionalProperties allow only string, integer or boolean"
        ),
        source=(
            "Customer.io docs, 'Using JSON in segments' (docs.customer.io/journeys/"
            "json-in-segments/): 'Attributes and event data can contain nested (JSON) "
            "values—arrays, objects, and arrays of objects'; the same v1 body schema declares "
            "object-valued attributes itself (cio_subscription_preferences, cio_relationships)"
        ),
        applies=lambda error: _v1_attribute_value(error, dict, list),
    ),
)

#: The path parameter ``identifier`` of the v1 person operations is a ``oneOf`` of three
#: ``type: string`` schemas (id, email, cio_id) that differ only in titles and in a ``format``
#: (``cio_[a-zA-Z0-9]*``) that is a pattern, not a JSON Schema format. Every string is valid
#: under at least two of them, so ``oneOf`` refuses every string: the description's own
#: example ``cio_03000001`` too. Customer.io "determine[s] the identifier type from the shape
#: of the value" (the parameter's description), i.e. one of them: a decoded identifier is
#: accepted when it is valid under at least one alternative (``anyOf``), nothing looser.
PATH_IDENTIFIER_DEFECT: Final = (
    "path parameter oneOf of three plain strings matches every string several times: "
    "checked as anyOf (see PATH_IDENTIFIER_DEFECT)"
)


# --------------------------------------------------------------------------- the checks


_JSON: Final = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Request:
    """What is checked of one HTTP request."""

    method: str
    path: str  # raw, as sent: percent-escapes included
    body: Any = None  # parsed JSON, None for no body
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def received(cls, record: ReceivedRequest) -> Request:
        return cls(record.method, record.path, record.body, record.headers)

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class Verdict:
    """The outcome of checking one request."""

    request: Request
    operation: SpecOperation | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)  # known differences that were needed

    @property
    def ok(self) -> bool:
        return not self.violations

    def report(self) -> str:
        head = f"{self.request.method} {self.request.path}"
        return "\n".join([head, *(f"  - {v}" for v in self.violations)])


#: RFC 3986 ``segment``: pchar = unreserved / pct-encoded / sub-delims / ":" / "@".
_SEGMENT: Final = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})+")


def _where(error: ValidationError) -> str:
    return error.json_path if error.absolute_path else "$"


def _explain(errors: Sequence[ValidationError], prefix: str = "") -> list[str]:
    return [f"{prefix}{_where(e)}: {e.message[:400]}" for e in errors]


def _match(request: Request) -> tuple[SpecOperation, dict[str, str]] | None:
    path, _, _query = request.path.partition("?")
    segments = path.split("/")
    for operation in OPERATIONS:
        if operation.method != request.method:
            continue
        template = operation.template.split("/")
        if len(template) != len(segments):
            continue
        values: dict[str, str] = {}
        for expected, actual in zip(template, segments, strict=True):
            if expected.startswith("{") and expected.endswith("}"):
                values[expected[1:-1]] = actual
            elif expected != actual:
                break
        else:
            return operation, values
    return None


def _check_parameter(verdict: Verdict, parameter: Parameter, raw: str, decoded: str) -> None:
    errors = list(validator(parameter.schema).iter_errors(decoded))
    if not errors:
        return
    alternatives = resolve(f"#{parameter.schema}").get("oneOf", [])
    matching = [
        index
        for index in range(len(alternatives))
        if validator(f"{parameter.schema}/oneOf/{index}").is_valid(decoded)
    ]
    ambiguous = all(e.validator == "oneOf" and not e.absolute_path for e in errors)
    if parameter.name == "identifier" and ambiguous and len(matching) > 1:
        verdict.allowed.append(PATH_IDENTIFIER_DEFECT)
        return
    verdict.violations += _explain(errors, f"path parameter {parameter.name} = {raw!r}: ")


def _check_path(verdict: Verdict) -> None:
    request = verdict.request
    path, _, query = request.path.partition("?")
    if query:
        verdict.violations.append(f"unexpected query string {query!r}")
    matched = _match(request)
    if matched is None:
        templates = sorted({f"{op.method} {op.template}" for op in OPERATIONS})
        verdict.violations.append(
            f"{request.method} {path} matches no operation of the description "
            f"(operations: {', '.join(templates)})"
        )
        return
    operation, raw_values = matched
    verdict.operation = operation
    declared = {p.name: p for p in operation.parameters if p.location == "path"}
    if set(declared) != set(raw_values):
        verdict.violations.append(
            f"path parameters {sorted(raw_values)} but {operation.name} declares {sorted(declared)}"
        )
    for name, raw in raw_values.items():
        if raw in ("", ".", ".."):
            verdict.violations.append(
                f"path parameter {name} = {raw!r} is empty or a dot-segment (an id of dots "
                "sent unencoded is removed on the way: RFC 3986 §5.2.4)"
            )
            continue
        if not _SEGMENT.fullmatch(raw):
            verdict.violations.append(
                f"path parameter {name} = {raw!r} is not one percent-encoded segment"
            )
            continue
        try:
            decoded = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            verdict.violations.append(f"path parameter {name} = {raw!r} is not UTF-8")
            continue
        verdict.parameters[name] = decoded
        if name in declared:
            _check_parameter(verdict, declared[name], raw, decoded)


def _known(operation: SpecOperation, error: ValidationError) -> KnownDifference | None:
    for difference in KNOWN_DIFFERENCES:
        if difference.operation_id == operation.operation_id and difference.applies(error):
            return difference
    return None


def _check_body(verdict: Verdict) -> None:
    operation, request = verdict.operation, verdict.request
    assert operation is not None
    if operation.body_schema is None:
        if request.body is not None or request.header("Content-Length") not in (None, "0"):
            verdict.violations.append(f"{operation.name} takes no request body; one was sent")
        return
    if request.header("Content-Type") != "application/json":
        verdict.violations.append(
            f"Content-Type is {request.header('Content-Type')!r}; the description's "
            "requestBody is application/json"
        )
    if request.body is None:
        verdict.violations.append("no JSON body (empty, or not valid JSON)")
        return
    batch = operation.operation_id == "batch" and isinstance(request.body, dict)
    items = request.body.get("batch") if batch else None
    per_item = (
        {index: check_batch_item(item, index) for index, item in enumerate(items)}
        if isinstance(items, list)
        else {}
    )
    for error in validator(operation.body_schema).iter_errors(request.body):
        difference = _known(operation, error)
        path = list(error.absolute_path)
        if difference is not None:
            verdict.allowed.append(f"{_where(error)}: {difference.what}")
        elif len(path) >= 2 and path[0] == "batch" and per_item.get(path[1]):
            continue  # the batch schema refused an item: the item's own check says why
        else:
            verdict.violations += _explain([error], "body ")
    for problems in per_item.values():
        verdict.violations += problems


def check_batch_item(item: Any, index: int = 0) -> list[str]:
    """Why one ``/api/v2/batch`` item does not validate (empty: it does).

    The verdict is the description's items schema (``anyOf`` person / object / delivery).
    Its own message for a failing ``anyOf`` says little, so a failing person item is
    explained by the Person alternative for its ``action`` as well.
    """
    errors = list(validator(BATCH_ITEM).iter_errors(item))
    if not errors:
        return []
    action = item.get("action") if isinstance(item, dict) else None
    label = f"batch[{index}] ({action or '?'}): "
    found = _explain(errors, label)
    ref = PERSON_ALTERNATIVES.get(action) if isinstance(action, str) else None
    if ref is not None:
        detail = list(validator(ref.removeprefix("#")).iter_errors(item))
        found += _explain(detail, f"{label}as {ref.rsplit('/', 1)[-1]}: ")
    return found


def check(request: Request) -> Verdict:
    """Check one request against the description (see the module docstring)."""
    verdict = Verdict(request)
    _check_path(verdict)
    if verdict.operation is not None:
        _check_body(verdict)
    return verdict


def assert_conforms(request: Request | ReceivedRequest) -> Verdict:
    """Check a request; fail with every violation listed."""
    if isinstance(request, ReceivedRequest):
        request = Request.received(request)
    verdict = check(request)
    assert verdict.ok, "request does not conform to the description:\n" + verdict.report()
    return verdict


def assert_refused(request: Request, *expected: str) -> Verdict:
    """Check that the validator refuses a request, with messages containing ``expected``."""
    verdict = check(request)
    assert not verdict.ok, f"the validator accepted {request}"
    text = "\n".join(verdict.violations)
    for fragment in expected:
        assert fragment in text, text
    return verdict


# --------------------------------------------------------------------------- values


class Plan(str, Enum):
    PRO = "pro"


class Tier(IntEnum):
    GOLD = 3


#: One value of every kind ``validation`` accepts (docs/validation.md), before normalisation.
VALUES: Final[dict[str, Any]] = {
    "str": "pro",
    "unicode": "Zoë Ünal – 中文 – 😀",
    "empty_str": "",
    "int": 42,
    "int64_min": -(2**63),
    "int64_max": 2**63 - 1,
    "float": 19.99,
    "integral_float": 3.0,
    "bool": True,
    "none": None,
    "nested_dict": {"city": "Zürich", "geo": {"lat": 47.37, "lng": 8.54}, "tags": ["a"]},
    "list": ["a", 1, 2.5, None, {"k": "v"}, []],
    "empty_dict": {},
    "empty_list": [],
    "tuple": ("a", 1),
    "aware_datetime": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
    "naive_datetime": datetime(2024, 1, 2, 3, 4, 5),
    "date": date(2020, 1, 1),
    "decimal_integral": Decimal("3.00"),
    "decimal_fraction": Decimal("42.50"),
    "uuid": UUID("12345678-1234-5678-1234-567812345678"),
    "str_enum": Plan.PRO,
    "int_enum": Tier.GOLD,
    "lazy_str": gettext_lazy("Hello"),
}

V1_NULL_REASON: Final = (
    "the description allows only string, integer or boolean v1 identify attribute values, and "
    "no Customer.io source documents null there (numbers and nested JSON are, see "
    "KNOWN_DIFFERENCES): the app sends null on v1 identify; open question, not allowed"
)


def value_params(xfail: Mapping[str, str] | None = None) -> list[Any]:
    marks = xfail or {}
    return [
        pytest.param(
            name,
            id=name,
            marks=[pytest.mark.xfail(reason=marks[name], strict=True)] if name in marks else [],
        )
        for name in VALUES
    ]


def attributes_of(name: str) -> dict[str, Any]:
    """Identify attributes carrying ``VALUES[name]``, normalised as the app stores them."""
    return validation.attributes({"plan": "pro", "prénom": "Zoë", f"value_{name}": VALUES[name]})


def data_of(name: str) -> dict[str, Any]:
    """Event data carrying ``VALUES[name]``, normalised as the app stores them."""
    return validation.event_data({"order": "A-1", "ünïcode": "中", f"value_{name}": VALUES[name]})


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def shared_transport(fake_cio_server: FakeCustomerIO) -> Iterator[Transport]:
    """One transport (one keep-alive connection) for the module's requests."""
    with Transport(
        site_id=SITE_ID,
        api_key=API_KEY,
        base_url=fake_cio_server.url,
        connect_timeout=2.0,
        read_timeout=2.0,
    ) as made:
        yield made


@pytest.fixture
def transport(fake_cio: FakeCustomerIO, shared_transport: Transport) -> Transport:
    """The shared transport, talking to a freshly reset ``fake_cio``."""
    return shared_transport


def only_request(fake: FakeCustomerIO) -> ReceivedRequest:
    requests = fake.requests
    assert len(requests) == 1, [(r.method, r.path) for r in requests]
    return requests[0]


# --------------------------------------------------------------------------- the fixture itself


def _walk(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{where}/{index}")


def test_the_fixture_is_the_openapi_3_1_subset() -> None:
    """The six operations, OpenAPI 3.1 (JSON Schema 2020-12; no 3.0 ``nullable``), every
    ``$ref`` resolvable, every schema a valid 2020-12 schema."""
    assert DESCRIPTION["openapi"].startswith("3.1."), DESCRIPTION["openapi"]
    assert "jsonSchemaDialect" not in DESCRIPTION  # the OAS 3.1 base dialect: 2020-12
    assert sorted((op.method, op.template) for op in OPERATIONS) == [
        ("DELETE", "/api/v1/customers/{identifier}"),
        ("GET", "/api/v1/accounts/region"),
        ("POST", "/api/v1/customers/{identifier}/events"),
        ("POST", "/api/v1/events"),
        ("POST", "/api/v2/batch"),
        ("PUT", "/api/v1/customers/{identifier}"),
    ]
    nodes = list(_walk(DESCRIPTION))
    nullable = [where for where, node in nodes if isinstance(node, dict) and "nullable" in node]
    assert nullable == [], "OpenAPI 3.0 'nullable' needs translating before validation"
    refs = {node["$ref"] for _, node in nodes if isinstance(node, dict) and "$ref" in node}
    assert refs and all(resolve(ref) is not None for ref in refs)
    for schema in DESCRIPTION["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for operation in OPERATIONS:
        if operation.body_schema is not None:
            Draft202012Validator.check_schema(resolve(f"#{operation.body_schema}"))
    assert set(PERSON_ALTERNATIVES) >= {"identify", "event", "delete"}


# --------------------------------------------------------------------------- v1 requests


@pytest.mark.parametrize("name", value_params(xfail={"none": V1_NULL_REASON}))
def test_v1_identify_conforms(fake_cio: FakeCustomerIO, transport: Transport, name: str) -> None:
    transport.send("identify", "user-42", {"attributes": attributes_of(name)})
    verdict = assert_conforms(only_request(fake_cio))
    assert verdict.operation is not None and verdict.operation.operation_id == "identify"
    assert verdict.parameters == {"identifier": "user-42"}


def test_v1_identify_with_empty_attributes_conforms(
    fake_cio: FakeCustomerIO, transport: Transport
) -> None:
    transport.identify("user-42", validation.attributes(None))
    request = only_request(fake_cio)
    assert request.body == {}
    assert_conforms(request)


@pytest.mark.parametrize("name", value_params())
def test_v1_track_conforms(fake_cio: FakeCustomerIO, transport: Transport, name: str) -> None:
    payload = {"name": "order_placed", "data": data_of(name), "id": EVENT_ID, "timestamp": 5}
    transport.send("track", "user-42", payload)
    verdict = assert_conforms(only_request(fake_cio))
    assert verdict.operation is not None and verdict.operation.operation_id == "track"
    assert verdict.parameters == {"identifier": "user-42"}


EVENT_VARIANTS: Final = [
    pytest.param({"id": EVENT_ID, "timestamp": TIMESTAMP}, id="id_and_timestamp"),
    pytest.param(
        {
            "id": EVENT_ID,
            "timestamp": validation.timestamp(datetime(2024, 1, 2, tzinfo=timezone.utc)),
        },
        id="datetime_timestamp",
    ),
    pytest.param({"id": EVENT_ID}, id="no_timestamp"),
    pytest.param({"timestamp": TIMESTAMP}, id="no_event_id"),
    pytest.param({}, id="neither"),
]


@pytest.mark.parametrize("extra", EVENT_VARIANTS)
def test_v1_track_event_id_and_timestamp_variants(
    fake_cio: FakeCustomerIO, transport: Transport, extra: dict[str, Any]
) -> None:
    transport.send("track", "user-42", {"name": "ünïcode event ✓", "data": {}, **extra})
    request = only_request(fake_cio)
    assert {k: request.body[k] for k in extra} == extra
    assert_conforms(request)


@pytest.mark.parametrize("name", value_params())
def test_v1_track_anonymous_conforms(
    fake_cio: FakeCustomerIO, transport: Transport, name: str
) -> None:
    payload = {"anonymous_id": "anon-7", "name": "page_viewed", "data": data_of(name)}
    transport.send("track_anonymous", "anon-7", {**payload, "id": EVENT_ID, "timestamp": 5})
    verdict = assert_conforms(only_request(fake_cio))
    assert verdict.operation is not None and verdict.operation.operation_id == "trackAnonymous"


def test_v1_delete_conforms(fake_cio: FakeCustomerIO, transport: Transport) -> None:
    transport.send("delete", "user-42", {})
    verdict = assert_conforms(only_request(fake_cio))
    assert verdict.operation is not None and verdict.operation.operation_id == "delete"
    assert verdict.parameters == {"identifier": "user-42"}


def test_region_check_conforms(fake_cio: FakeCustomerIO, transport: Transport) -> None:
    transport.check_credentials()
    verdict = assert_conforms(only_request(fake_cio))
    assert verdict.operation is not None and verdict.operation.operation_id == "getRegion"


# --------------------------------------------------------------------------- v1 paths

#: Customer ids whose path segment is easy to get wrong (docs/validation.md: a customer id is
#: any non-blank string of at most 150 bytes, or an int or UUID).
CUSTOMER_IDS: Final = [
    pytest.param("42", id="digits"),
    pytest.param("jane.doe+tag@example.com", id="email"),
    pytest.param("user 1", id="space"),
    pytest.param(" u-1 ", id="padded"),
    pytest.param("a/b", id="slash"),
    pytest.param("a?b#c&d=e", id="query_chars"),
    pytest.param("100%", id="percent"),
    pytest.param("%2F", id="escape_lookalike"),
    pytest.param("zoë-中-😀", id="unicode"),
    pytest.param("+14155552671", id="phone"),
    pytest.param("...", id="three_dots"),
    pytest.param(".", id="dot"),
    pytest.param("..", id="dot_dot"),
    pytest.param("a/../b", id="dot_dot_inside"),
]


def _v1_person_calls(transport: Transport, customer_id: str) -> None:
    """identify, track, delete of ``customer_id``; a refusal is checked on the wire below."""
    calls: list[tuple[Kind, dict[str, Any]]] = [
        ("identify", {"attributes": {"plan": "pro"}}),
        ("track", {"name": "paid", "data": {}, "id": EVENT_ID}),
        ("delete", {}),
    ]
    for kind, payload in calls:
        with contextlib.suppress(DeliveryError):
            transport.send(kind, customer_id, payload)


@pytest.mark.parametrize("customer_id", CUSTOMER_IDS)
def test_v1_paths_carry_the_customer_id_as_one_segment(
    fake_cio: FakeCustomerIO, transport: Transport, customer_id: str
) -> None:
    _v1_person_calls(transport, customer_id)
    requests = fake_cio.requests
    assert [r.method for r in requests] == ["PUT", "POST", "DELETE"]
    for request in requests:
        verdict = assert_conforms(request)
        assert verdict.parameters == {"identifier": customer_id}, request.path


@pytest.mark.parametrize("customer_id", [".", ".."])
def test_v1_paths_percent_encode_dot_segment_ids(
    fake_cio: FakeCustomerIO, transport: Transport, customer_id: str
) -> None:
    """An id that would be a dot-segment travels with its dots as ``%2E``. Sent as ``.`` or
    ``..``, urllib3 (and any proxy or server) removes it (RFC 3986 §5.2.4) and the request
    goes elsewhere: identify of ``.`` becomes ``PUT /api/v1/customers/``, of ``..``
    ``PUT /api/v1/``, and a track of ``..`` becomes ``POST /api/v1/events``, an anonymous
    event. Other dots (``jane.doe@...``) cannot form a dot-segment and may stay literal; the
    general path check covers them."""
    _v1_person_calls(transport, customer_id)
    requests = fake_cio.requests
    assert [r.method for r in requests] == ["PUT", "POST", "DELETE"]
    for request in requests:
        segment = request.path.split("/")[4] if request.path.count("/") >= 4 else ""
        assert "." not in segment and segment, request.path
        assert segment.upper() == "%2E" * len(customer_id), request.path
        assert unquote(segment) == customer_id


# --------------------------------------------------------------------------- v2 batch


def batch_items_for(name: str) -> list[BatchItem]:
    """One stored operation of every kind the app sends in a batch, carrying ``VALUES[name]``."""
    return [
        BatchItem("identify", "user-1", {"attributes": attributes_of(name)}),
        BatchItem(
            "track",
            "user-1",
            {"name": "order_placed", "data": data_of(name), "id": EVENT_ID, "timestamp": 5},
        ),
        BatchItem("track", "user-2", {"name": "signed_up", "data": data_of(name)}),
        BatchItem("delete", "user-3", {}),
    ]


@pytest.mark.parametrize("name", value_params())
def test_v2_batch_conforms(fake_cio: FakeCustomerIO, transport: Transport, name: str) -> None:
    outcomes = transport.send_batch(batch_items_for(name))
    assert outcomes == [None, None, None, None]
    request = only_request(fake_cio)
    verdict = assert_conforms(request)
    assert verdict.operation is not None and verdict.operation.operation_id == "batch"
    assert [item["action"] for item in request.body["batch"]] == [
        "identify",
        "event",
        "event",
        "delete",
    ]


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        pytest.param("identify", {"attributes": {}}, id="identify_empty"),
        pytest.param("identify", {}, id="identify_no_attributes"),
        pytest.param("track", {"name": "e", "data": {}}, id="track_bare"),
        pytest.param("track", {"name": "e", "data": None, "id": EVENT_ID_2}, id="track_no_data"),
        pytest.param(
            "track", {"name": "ëvent ✓", "data": {}, "timestamp": TIMESTAMP}, id="track_ts"
        ),
        pytest.param("delete", {}, id="delete"),
    ],
)
def test_batch_item_builds_conforming_items(kind: Kind, payload: dict[str, Any]) -> None:
    """Built directly (no server): every shape :func:`batch_item` gives for the app's kinds."""
    item = batch_item(kind, "user-1", payload)
    assert check_batch_item(item) == []
    body = {"batch": [item]}
    assert list(validator(BATCH_BODY).iter_errors(body)) == []


def test_batch_items_of_every_value_at_once_conform() -> None:
    attributes = validation.attributes({f"a_{name}": value for name, value in VALUES.items()})
    data = validation.event_data({f"d_{name}": value for name, value in VALUES.items()})
    items = [
        batch_item("identify", "user-1", {"attributes": attributes}),
        batch_item("track", "user-1", {"name": "e", "data": data, "id": EVENT_ID, "timestamp": 5}),
        batch_item("delete", "user-1", {}),
    ]
    problems = [p for index, item in enumerate(items) for p in check_batch_item(item, index)]
    assert problems == []


# --------------------------------------------------------------------------- anonymous events


def test_the_description_refuses_anonymous_id_as_a_batch_person_identifier() -> None:
    """Proof the item check has teeth: a person's ``identifiers`` may be ``id``, ``email``,
    ``phone`` or ``cio_id`` (``person_common``), never ``anonymous_id``; so the app must not
    send anonymous events in ``/api/v2/batch``."""
    event = batch_item("track", "anon-7", {"name": "page_viewed", "data": {}, "id": EVENT_ID})
    assert check_batch_item(event) == []
    anonymous = {**event, "identifiers": {"anonymous_id": "anon-7"}}
    problems = check_batch_item(anonymous, 3)
    assert problems, "the description accepted identifiers.anonymous_id"
    assert any(p.startswith("batch[3] (event): as person_event: $.identifiers:") for p in problems)
    assert_refused(
        Request("POST", "/api/v2/batch", {"batch": [event, anonymous]}, _JSON),
        "batch[1] (event)",
    )


def test_anonymous_events_go_to_v1_events_and_conform(
    fake_cio: FakeCustomerIO, transport: Transport
) -> None:
    transport.track_anonymous("anon-7", "page_viewed", {"path": "/ü"}, event_id=EVENT_ID)
    transport.send(
        "track_anonymous",
        "anon-8",
        {"anonymous_id": "anon-8", "name": "seen", "data": {}, "id": EVENT_ID_2, "timestamp": 5},
    )
    transport.track_anonymous("anon-9", "no_id_no_timestamp")
    requests = fake_cio.requests
    assert [(r.method, r.path) for r in requests] == [("POST", "/api/v1/events")] * 3
    assert [r.body["anonymous_id"] for r in requests] == ["anon-7", "anon-8", "anon-9"]
    for request in requests:
        verdict = assert_conforms(request)
        assert verdict.operation is not None
        assert verdict.operation.operation_id == "trackAnonymous"


def test_send_batch_never_puts_an_anonymous_event_in_a_batch(
    fake_cio: FakeCustomerIO, transport: Transport
) -> None:
    """Anonymous events travel only as ``POST /api/v1/events``. Whether ``send_batch`` sends
    them there or refuses them is the transport's choice: both conform."""
    items = [
        BatchItem("identify", "user-1", {"attributes": {"plan": "pro"}}),
        BatchItem(
            "track_anonymous",
            "anon-7",
            {"anonymous_id": "anon-7", "name": "page_viewed", "data": {}, "id": EVENT_ID},
        ),
        BatchItem("track", "user-1", {"name": "paid", "data": {}, "id": EVENT_ID_2}),
    ]
    with contextlib.suppress(DeliveryError, ValueError):
        transport.send_batch(items)
    for request in fake_cio.requests:
        assert_conforms(request)
        if request.path == "/api/v2/batch":
            identifiers = [item.get("identifiers") for item in request.body["batch"]]
            assert all("anonymous_id" not in i for i in identifiers), identifiers


# ------------------------------------------------------------------------- the validator has teeth


def test_the_validator_refuses_an_identify_item_with_list_attributes() -> None:
    item = batch_item("identify", "user-1", {"attributes": {"plan": "pro"}})
    assert check_batch_item(item) == []
    wrong = {**item, "attributes": [{"plan": "pro"}]}
    problems = check_batch_item(wrong, 0)
    assert "batch[0] (identify): as identify_person: $.attributes: " in "\n".join(problems)
    assert any("is not of type 'object'" in p for p in problems), problems
    assert_refused(Request("POST", "/api/v2/batch", {"batch": [wrong]}, _JSON), "batch[0]")


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        pytest.param(
            Request("PUT", "/api/v1/customers/u1", ["plan", "pro"], _JSON),
            "is not of type 'object'",
            id="identify_body_is_a_list",
        ),
        pytest.param(
            Request("PUT", "/api/v1/customers/u1", {"email": "not-an-address"}, _JSON),
            "is not a 'email'",
            id="identify_email_format",
        ),
        pytest.param(
            Request("POST", "/api/v1/customers/u1/events", {"data": {}}, _JSON),
            "body $: ",
            id="event_without_name",
        ),
        pytest.param(
            Request("POST", "/api/v1/events", {"name": "e", "timestamp": "1700000000"}, _JSON),
            "body $: ",
            id="anonymous_event_with_string_timestamp",
        ),
        pytest.param(
            Request("POST", "/api/v1/customers/u1/events", {"name": "e"}, {}),
            "Content-Type is None",
            id="no_content_type",
        ),
        pytest.param(
            Request("DELETE", "/api/v1/customers/u1", {"x": 1}, _JSON),
            "takes no request body",
            id="delete_with_body",
        ),
        pytest.param(
            Request("POST", "/api/v2/batch", {"batch": "nope"}, _JSON),
            "body $.batch: 'nope' is not of type 'array'",
            id="batch_not_an_array",
        ),
        pytest.param(
            Request("POST", "/api/v1/customers/u1", {"name": "e"}, _JSON),
            "matches no operation",
            id="wrong_method",
        ),
        pytest.param(
            Request("PUT", "/api/v1/customers/a/b", {}, _JSON), "matches no operation", id="slash"
        ),
        pytest.param(
            Request("PUT", "/api/v1/customers/..", {}, _JSON),
            "is empty or a dot-segment",
            id="dot_dot_segment",
        ),
        pytest.param(
            Request("PUT", "/api/v1/customers/a b", {}, _JSON),
            "is not one percent-encoded segment",
            id="raw_space",
        ),
        pytest.param(
            Request("PUT", "/api/v1/customers/%FF", {}, _JSON), "is not UTF-8", id="not_utf8"
        ),
        pytest.param(Request("GET", "/api/v1/accounts/region?x=1"), "query string", id="query"),
    ],
)
def test_the_validator_refuses_wrong_requests(request_: Request, expected: str) -> None:
    assert_refused(request_, expected)


def test_the_known_differences_are_still_in_the_description() -> None:
    """Each allowance is still needed: when the description is fixed, this fails, and the
    allowance goes."""
    strict = validator(IDENTIFY_BODY)
    for value, difference in [
        (19.99, KNOWN_DIFFERENCES[0]),
        ({"a": 1}, KNOWN_DIFFERENCES[1]),
        ([1, 2], KNOWN_DIFFERENCES[1]),
    ]:
        errors = list(strict.iter_errors({"attr": value}))
        assert errors and all(difference.applies(e) for e in errors), value
        verdict = assert_conforms(Request("PUT", "/api/v1/customers/u1", {"attr": value}, _JSON))
        assert verdict.allowed == [PATH_IDENTIFIER_DEFECT, f"$.attr: {difference.what}"]
    # None is refused and not forgiven (V1_NULL_REASON).
    assert not strict.is_valid({"attr": None})
    assert_refused(Request("PUT", "/api/v1/customers/u1", {"attr": None}, _JSON), "$.attr")
    # The path identifier's oneOf refuses every string, even the description's own example.
    parameter = validator("/components/parameters/track_customer_id/schema")
    for value in ("42", "person@example.com", "cio_03000001"):
        [error] = parameter.iter_errors(value)
        assert error.validator == "oneOf" and "is valid under each of" in error.message
    verdict = assert_conforms(Request("DELETE", "/api/v1/customers/cio_03000001"))
    assert verdict.allowed == [PATH_IDENTIFIER_DEFECT]


# --------------------------------------------------------------------------- through the outbox


@pytest.mark.django_db(transaction=True)
def test_every_request_of_an_outbox_drain_conforms(no_kick: FakeCustomerIO, settings: Any) -> None:
    """End to end: the public API stores operations of every kind for several people, one
    drain delivers them (batched where the outbox batches), and every request conforms: no
    anonymous event inside ``/api/v2/batch``."""
    import django_cio_reliable as cio
    from django_cio_reliable import outbox

    settings.CIO_RELIABLE = {**settings.CIO_RELIABLE, "RATE_LIMIT": 10_000, "BATCH": True}
    for n in range(3):
        cio.identify(f"user-{n}", {"plan": Plan.PRO, "since": date(2020, 1, 1), "n": n})
        cio.track(f"user-{n}", "paid", {"total": Decimal("9.50"), "items": [{"sku": "A"}]})
        cio.track_anonymous(f"anon-{n}", "page_viewed", {"path": "/ü"})
    cio.delete("user-0")
    outbox.drain(max_seconds=30, sleep=lambda seconds: None)
    requests = no_kick.requests
    assert len(no_kick.receipts) == 10
    for request in requests:
        assert_conforms(request)
    batched = [
        item
        for request in requests
        if request.path == "/api/v2/batch"
        for item in request.body["batch"]
    ]
    assert batched, "the drain sent no batch: nothing was checked in /api/v2/batch"
    assert all("anonymous_id" not in item["identifiers"] for item in batched), batched
    anonymous = [r for r in requests if r.path == "/api/v1/events"]
    assert sorted(r.body["anonymous_id"] for r in anonymous) == ["anon-0", "anon-1", "anon-2"]
