"""Removal of unreferenced alias wires from Amaranth's RTLIL.

Amaranth's RTLIL backend declares a wire for every named signal a module
refers to, and one more for every field of a signal with a ``data.Layout``
shape (``stage.meta.valid``). Each net has one canonical wire (the output of
the cell that drives it, or an input port); every other name of the net is a
wire driven only by a module-level ``connect`` to that canonical wire. Such an
alias is read by nothing when the logic refers to the canonical wire, which
is the case for:

* the fields of a layout-shaped signal (``x.y`` is ``x[a:b]``);
* a port of a submodule as seen by its parent (``core.enable`` is named
  ``enable`` in the top but is the net ``core_mask[0]``; the two ends of a
  ``wiring.connect`` are two signals but one net);
* a signal that names a slice or an extension of an operator result (Amaranth
  operators are wider than their truncating assignment target).

They are debug names only: every value they show is still visible under the
canonical name. Verilator's ``-Wall`` reports each of them as UNUSEDSIGNAL.
:func:`strip_unused_aliases` deletes exactly these wires: a wire that is not a
port, has no ``keep`` attribute, whose only driver is a single whole-wire
``connect`` (pure wiring, no logic), and whose name appears in no other
statement of its module. A signal
computed by logic (a cell or a process output) and read by nothing is never
removed, nor is a partially used signal, so lint still reports real design
problems.
"""

import re

__all__ = ["strip_unused_aliases"]

# A module-level connection, as written by Amaranth's RTLIL builder (column 0).
_CONNECT = re.compile(r"connect (\S+) (.+)")
# A wire declaration: "wire width N [signed] NAME" or "wire width N input|output|inout K [signed] NAME".
_WIRE = re.compile(r"\s+wire width \d+(?P<port> (?:input|output|inout) \d+)?(?: +signed)? +(?P<name>\S+)$")
# RTLIL identifiers: public (\name) or private ($name); strings are skipped by _references.
_IDENT = re.compile(r'"(?:[^"\\]|\\.)*"|([\\$]\S+)')


def _references(line):
    return [m.group(1) for m in _IDENT.finditer(line) if m.group(1)]


def _strip_module(lines):
    """Strip one module body (the lines between ``module`` and its ``end``); returns new lines."""
    while True:
        wires = {}          # name -> index of its "wire" line, for non-port wires without "keep"
        connects = {}       # name -> indices of the module-level connects that drive the whole wire
        uses = {}           # name -> number of other references
        attributes = []     # the attribute names seen since the last object
        for index, line in enumerate(lines):
            stripped = line.lstrip()
            if stripped.startswith("attribute "):
                attributes.append(stripped.split()[1])
                continue
            if line.startswith("connect "):
                lhs, rhs = _CONNECT.match(line).groups()
                if rhs.startswith("["):
                    # Part of a wire on the left ("\\x [3:0]"): not an alias of the whole wire.
                    names = _references(line)
                else:
                    connects.setdefault(lhs, []).append(index)
                    names = _references(rhs)
            elif stripped.startswith("wire "):
                match = _WIRE.match(line)
                if not match.group("port") and "\\keep" not in attributes:
                    wires[match.group("name")] = index
                names = []
            elif stripped.startswith("parameter "):
                names = []
            elif stripped.startswith("connect "):
                # A cell port, "connect <port> <sigspec>": the port name is not a wire.
                names = _references(stripped.split(None, 2)[2])
            else:
                names = _references(line)
            attributes = []
            for name in names:
                uses[name] = uses.get(name, 0) + 1
        dead = {name for name in wires if len(connects.get(name, ())) == 1 and not uses.get(name)}
        if not dead:
            return lines
        drop = set()
        for name in dead:
            drop.add(connects[name][0])
            index = wires[name]
            drop.add(index)
            # The wire's attributes precede it; the builder ends each wire with an empty line.
            start = index - 1
            while start >= 0 and lines[start].lstrip().startswith("attribute "):
                drop.add(start)
                start -= 1
            if index + 1 < len(lines) and not lines[index + 1].strip():
                drop.add(index + 1)
        lines = [line for index, line in enumerate(lines) if index not in drop]


def strip_unused_aliases(rtlil_text: str) -> str:
    """``rtlil_text`` (Amaranth's RTLIL) without its unreferenced alias wires (see the module docstring)."""
    out, body = [], None
    for line in rtlil_text.splitlines(keepends=True):
        if body is None:
            out.append(line)
            if line.startswith("module "):
                body = []
        elif line.rstrip("\n") == "end":
            out += _strip_module([b.rstrip("\n") + "\n" for b in body])
            out.append(line)
            body = None
        else:
            body.append(line)
    if body is not None:
        raise ValueError("unterminated module in RTLIL text")
    return "".join(out)
