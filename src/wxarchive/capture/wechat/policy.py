"""Which conversations of a managed device are work, and so captured.

A policy is a TOML file per device or employee::

    employee = "Li Wei"                      # optional, for the operator's reports
    work_contacts = ["wxid_client01"]       # chats with these people are work
    work_groups = ["12345678@chatroom"]     # these group chats are work
    work_labels = ["客户", "Clients"]         # contacts carrying one of these labels are work
    customer_list = "clients.csv"           # the firm's customer list: wxid, mobile or name per row
    colleagues = ["wxid_colleague"]         # chats with colleagues are work
    openim_contacts = true                  # WeCom contacts (…@openim) are work (default true)
    groups_with_work_contacts = false       # a group with a work contact in it is work (default false)

Everything else is personal and is never written to the journal: the ingest keeps only a
count per day of what it left out, so completeness can be reconciled (captured + excluded
= total). Without a policy nothing is captured.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from wxarchive.capture.wechat.records import Contact, Group
from wxarchive.model import mobile_digits

KEYS = {"employee", "device", "work_contacts", "work_groups", "work_labels", "customer_list", "colleagues",
        "openim_contacts", "groups_with_work_contacts"}
_WXID = re.compile(r"^(wxid_[A-Za-z0-9_-]+|[A-Za-z][A-Za-z0-9_-]{5,19}|.+@(chatroom|openim))$")


class PolicyError(ValueError):
    """The policy file is unusable; the message names the file and the problem."""


@dataclass
class Customers:
    ids: set[str] = field(default_factory=set)  # wxids or WeChat IDs (aliases)
    mobiles: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)  # case-folded

    def __len__(self) -> int:
        return len(self.ids) + len(self.mobiles) + len(self.names)


@dataclass
class Decision:
    work: bool
    reason: str


@dataclass
class Policy:
    path: Path | None = None
    sha256: str | None = None  # of the policy file, and of the customer list, for the run's record
    customers_sha256: str | None = None
    employee: str | None = None
    work_contacts: set[str] = field(default_factory=set)
    work_groups: set[str] = field(default_factory=set)
    work_labels: set[str] = field(default_factory=set)
    colleagues: set[str] = field(default_factory=set)
    customers: Customers = field(default_factory=Customers)
    openim_contacts: bool = True
    groups_with_work_contacts: bool = False

    def contact_reason(self, cid: str, contact: Contact | None) -> str | None:
        if cid in self.work_contacts:
            return "work_contacts"
        if cid in self.colleagues:
            return "colleagues"
        if self.openim_contacts and cid.endswith("@openim"):
            return "WeCom contact (@openim)"
        c = contact
        if c is not None:
            hit = sorted(set(c.labels) & self.work_labels)
            if hit:
                return f"label {hit[0]}"
        cu = self.customers
        if cid in cu.ids or (c is not None and c.alias and c.alias in cu.ids):
            return "customer list (wxid)"
        if c is not None:
            for value in (c.mobile, c.remark, c.description, c.alias):
                d = mobile_digits(value)
                if d and len(d) >= 7 and d in cu.mobiles:
                    return "customer list (mobile)"
            for value in (c.remark, c.nickname):
                if value and value.casefold().strip() in cu.names:
                    return "customer list (name)"
        return None

    def needs_contacts(self) -> bool:
        """Whether some rule can only match through the contact table (labels, names, mobiles, WeChat IDs)."""
        return bool(self.work_labels or self.customers.names or self.customers.mobiles or self.customers.ids)

    def decide(self, talker: str, contacts: dict[str, Contact], groups: dict[str, Group],
               owner: str | None = None) -> Decision:
        if talker.endswith("@chatroom"):
            if talker in self.work_groups:
                return Decision(True, "work_groups")
            if self.groups_with_work_contacts:
                g = groups.get(talker)
                for member in (g.members if g else []):
                    if member == owner:  # the device's owner is in every group: never what makes one work
                        continue
                    why = self.contact_reason(member, contacts.get(member))
                    if why:
                        return Decision(True, f"group with a work contact ({why})")
            return Decision(False, "group not in the policy")
        why = self.contact_reason(talker, contacts.get(talker))
        if why:
            return Decision(True, why)
        return Decision(False, "not in the policy")


def _strings(path: Path, data: dict, key: str) -> set[str]:
    v = data.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise PolicyError(f"{path}: {key} must be a list of strings")
    return {x.strip() for x in v if x.strip()}


def _bool(path: Path, data: dict, key: str, default: bool) -> bool:
    v = data.get(key, default)
    if not isinstance(v, bool):
        raise PolicyError(f"{path}: {key} must be true or false")
    return v


def load(path: Path) -> Policy:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"{path}: no such policy file") from None
    except OSError as e:
        raise PolicyError(f"{path}: cannot read ({e.strerror or e.__class__.__name__})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise PolicyError(f"{path}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(KEYS))})")
    for key in ("employee", "device"):
        if key in data and not isinstance(data[key], str):
            raise PolicyError(f"{path}: {key} must be a string")
    p = Policy(path=path, sha256=hashlib.sha256(raw).hexdigest(), employee=data.get("employee"),
               work_contacts=_strings(path, data, "work_contacts"), work_groups=_strings(path, data, "work_groups"),
               work_labels=_strings(path, data, "work_labels"), colleagues=_strings(path, data, "colleagues"),
               openim_contacts=_bool(path, data, "openim_contacts", True),
               groups_with_work_contacts=_bool(path, data, "groups_with_work_contacts", False))
    bad = sorted(g for g in p.work_groups if not g.endswith("@chatroom"))
    if bad:
        raise PolicyError(f"{path}: work_groups entry {bad[0]!r} is not a group id (…@chatroom)")
    cl = data.get("customer_list")
    if cl is not None:
        if not isinstance(cl, str) or not cl.strip():
            raise PolicyError(f"{path}: customer_list must be the path of a CSV file")
        cpath = (path.parent / cl).expanduser()
        p.customers = load_customers(cpath)
        p.customers_sha256 = hashlib.sha256(cpath.read_bytes()).hexdigest()
    return p


def load_customers(path: Path) -> Customers:
    """One customer per row: a wxid (or WeChat ID), a mobile number or a name. A header row
    naming columns ``wxid``, ``mobile`` and ``name`` (any of them) says which is which;
    without one, each cell is classified by its shape."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise PolicyError(f"{path}: customer list not found") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: customer list is not UTF-8 text") from None
    except OSError as e:
        raise PolicyError(f"{path}: cannot read customer list ({e.strerror or e.__class__.__name__})") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    out = Customers()
    header = [c.strip().lower() for c in rows[0]] if rows else []
    named = header and set(header) & {"wxid", "mobile", "name", "alias"}
    for r in rows[1:] if named else rows:
        for i, cell in enumerate(r):
            cell = cell.strip()
            if not cell:
                continue
            col = header[i] if named and i < len(header) else None
            digits = mobile_digits(cell)
            phone = bool(digits and len(digits) >= 7 and re.fullmatch(r"[\d\s()+.-]+", cell))
            if col in ("wxid", "alias"):
                out.ids.add(cell)
            elif col == "mobile":
                if digits:
                    out.mobiles.add(digits)
            elif col == "name":
                out.names.add(cell.casefold())
            elif col is None:  # no header: a cell may be any of the three, so it counts as each it could be
                if phone:
                    out.mobiles.add(digits)
                    continue
                if _WXID.match(cell):
                    out.ids.add(cell)
                out.names.add(cell.casefold())
    if not len(out):
        raise PolicyError(f"{path}: customer list has no usable rows")
    return out
