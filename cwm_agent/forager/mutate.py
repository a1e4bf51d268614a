"""AST mutation operators: small, plausible bugs in a function, as minimal edits of its source text.

Each operator finds sites with `ast` and edits only the bytes of the node it changes (never
re-printing the function), so the bug's diff is one or two lines and the rest of the file keeps its
formatting and comments. Operators (names as stored in a task's `forage.operator`):

- `compare`: a comparison operator replaced (`<` / `<=`, `>` / `>=`, `==` / `!=`, `in` / `not in`, `is` / `is not`);
- `arith`: an arithmetic or bitwise operator replaced (`+` / `-`, `*` -> `+`, `//` -> `/`, ...), also in `x += ...`;
- `boolean`: `and` / `or` swapped;
- `negate`: an `if`/`while`/conditional expression's condition negated (or its `not` removed);
- `off_by_one`: a `range()` bound, a slice bound or a constant index moved by one;
- `remove_statement`: an assignment or call statement removed;
- `remove_return`: a `return` removed;
- `remove_branch`: an `if` block or an `else`/`elif` part removed;
- `drop_arg`: a call's last positional argument dropped;
- `swap_args`: a call's first two positional arguments swapped;
- `swap_vars`: the two variables of a binary operation or comparison swapped;
- `remove_import`: a module-level import of a name the function uses removed.
"""

from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass, field
from typing import Iterator

OPERATORS = (
    "compare",
    "arith",
    "boolean",
    "negate",
    "off_by_one",
    "remove_statement",
    "remove_return",
    "remove_branch",
    "drop_arg",
    "swap_args",
    "swap_vars",
    "remove_import",
)

Edit = tuple[int, int, str]
"""(start byte offset, end byte offset, replacement text) in the file's UTF-8 bytes."""


@dataclass(frozen=True)
class Function:
    """A function (or method) of a module: qualified name, its `co_firstlineno`, and its node."""

    qualname: str
    first_line: int
    """The line of its first decorator, else of `def`: what the function's code object reports."""
    node: ast.AST = field(compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class Mutation:
    """One candidate bug: edits of one file, made inside one function."""

    path: str
    function: str
    first_line: int
    operator: str
    line: int
    """Line (1-based, in the original file) of the changed node."""
    edits: tuple[Edit, ...]
    users: tuple[int, ...] = ()
    """For `remove_import`: the first lines of every function using the name (their tests are the relevant ones)."""

    @property
    def key(self) -> str:
        raw = repr((self.path, self.edits)).encode()
        return hashlib.sha256(raw).hexdigest()

    def apply(self, source: str) -> str:
        data = source.encode("utf-8")
        for start, end, text in sorted(self.edits, reverse=True):
            data = data[:start] + text.encode("utf-8") + data[end:]
        return data.decode("utf-8")


class _Source:
    """Byte offsets of AST positions (col_offset counts UTF-8 bytes)."""

    def __init__(self, text: str) -> None:
        self.data = text.encode("utf-8")
        self.starts = [0]
        for line in self.data.splitlines(keepends=True):
            self.starts.append(self.starts[-1] + len(line))

    def offset(self, line: int, col: int) -> int:
        return self.starts[line - 1] + col

    def start(self, node: ast.AST) -> int:
        return self.offset(node.lineno, node.col_offset)

    def end(self, node: ast.AST) -> int:
        return self.offset(node.end_lineno, node.end_col_offset)

    def text(self, start: int, end: int) -> str:
        return self.data[start:end].decode("utf-8")

    def seg(self, node: ast.AST) -> str:
        return self.text(self.start(node), self.end(node))

    def line_text(self, line: int) -> str:
        return self.text(self.starts[line - 1], self.starts[line]) if line < len(self.starts) else ""

    def whole_lines(self, node: ast.AST) -> tuple[int, int] | None:
        """(start, end) offsets of the full lines `node` occupies alone, or None if it shares a line."""
        before = self.text(self.starts[node.lineno - 1], self.start(node))
        after = self.text(self.end(node), self.starts[node.end_lineno])
        if before.strip() or (after.strip() and not after.strip().startswith("#")):
            return None
        return self.starts[node.lineno - 1], self.starts[node.end_lineno]


def functions(tree: ast.Module) -> list[Function]:
    """Every function and method of a module, nested ones included, in source order."""
    out: list[Function] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([d.lineno for d in child.decorator_list] + [child.lineno])
                out.append(Function(prefix + child.name, first, child))
                visit(child, prefix + child.name + ".<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def own_nodes(func: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a function's body, not descending into nested functions, classes or lambdas."""
    stack = list(reversed(list(ast.iter_child_nodes(func))))
    while stack:
        node = stack.pop()
        if isinstance(node, _SCOPES):
            continue
        yield node
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _bodies(node: ast.AST) -> Iterator[list[ast.stmt]]:
    for name in ("body", "orelse", "finalbody"):
        value = getattr(node, name, None)
        if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
            yield value


# Operator -> (regex finding it in the text between its operands, its replacement).
_COMPARE = {
    ast.Lt: (r"<(?![<=])", "<="),
    ast.LtE: (r"<=", "<"),
    ast.Gt: (r"(?<![-=>])>(?![>=])", ">="),
    ast.GtE: (r">=", ">"),
    ast.Eq: (r"==", "!="),
    ast.NotEq: (r"!=", "=="),
    ast.In: (r"\bin\b", "not in"),
    ast.NotIn: (r"\bnot\s+in\b", "in"),
    ast.Is: (r"\bis\b", "is not"),
    ast.IsNot: (r"\bis\s+not\b", "is"),
}
_ARITH = {
    ast.Add: (r"\+", "-"),
    ast.Sub: (r"-", "+"),
    ast.Mult: (r"(?<!\*)\*(?!\*)", "+"),
    ast.Div: (r"(?<!/)/(?!/)", "*"),
    ast.FloorDiv: (r"//", "/"),
    ast.Mod: (r"%", "//"),
    ast.Pow: (r"\*\*", "*"),
    ast.BitAnd: (r"&", "|"),
    ast.BitOr: (r"\|", "&"),
    ast.LShift: (r"<<", ">>"),
    ast.RShift: (r">>", "<<"),
}
_BOOL = {ast.And: (r"\band\b", "or"), ast.Or: (r"\bor\b", "and")}
_ATOMS = (ast.Name, ast.Attribute, ast.Call, ast.Subscript, ast.Constant)


def _gap_edit(src: _Source, left: ast.AST, right: ast.AST, pattern: str, new: str) -> Edit | None:
    """Replace the one operator token found between two operands (None if not exactly one)."""
    start, end = src.end(left), src.start(right)
    gap = src.text(start, end)
    if "#" in gap:
        return None
    matches = list(re.finditer(pattern, gap))
    if len(matches) != 1:
        return None
    m = matches[0]
    prefix = len(gap[: m.start()].encode())
    return (start + prefix, start + prefix + len(m.group(0).encode()), new)


def _int_literal(node: ast.AST) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _int_literal(node.operand)
        return -inner if inner is not None else None
    return None


def _shifted(src: _Source, node: ast.AST, delta: int) -> Edit:
    value = _int_literal(node)
    if value is not None:
        return (src.start(node), src.end(node), str(value + delta))
    text = src.seg(node)
    if not isinstance(node, _ATOMS):
        text = f"({text})"
    return (src.start(node), src.end(node), f"{text} {'+' if delta > 0 else '-'} 1")


def _removal(src: _Source, stmt: ast.stmt, body: list[ast.stmt]) -> tuple[Edit, ...] | None:
    span = src.whole_lines(stmt)
    if span is None:
        return None
    if len(body) == 1:
        return ((src.start(stmt), src.end(stmt), "pass"),)
    return ((span[0], span[1], ""),)


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _else_removal(src: _Source, node: ast.If) -> tuple[Edit, ...] | None:
    """Remove an `if`'s `else:` block or its `elif` chain (whole lines only)."""
    first = node.orelse[0]
    last_end = src.starts[node.orelse[-1].end_lineno]
    if src.whole_lines(node.orelse[-1]) is None:
        return None
    if isinstance(first, ast.If) and src.line_text(first.lineno).lstrip().startswith("elif"):
        return ((src.starts[first.lineno - 1], last_end, ""),)
    line = first.lineno - 1
    while line > node.lineno and not src.line_text(line).strip():
        line -= 1
    header = src.line_text(line).strip()
    if not re.fullmatch(r"else\s*:\s*(#.*)?", header):
        return None
    return ((src.starts[line - 1], last_end, ""),)


def function_mutations(path: str, src: _Source, func: Function) -> Iterator[Mutation]:
    """Every mutation of one function, in source order."""

    def make(operator: str, node: ast.AST, *edits: Edit | None) -> Mutation | None:
        if not edits or any(e is None for e in edits):
            return None
        return Mutation(path, func.qualname, func.first_line, operator, node.lineno, tuple(edits))

    candidates: list[Mutation | None] = []
    nodes = list(own_nodes(func.node))
    for node in nodes:
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for i, op in enumerate(node.ops):
                pattern, new = _COMPARE[type(op)]
                candidates.append(make("compare", node, _gap_edit(src, operands[i], operands[i + 1], pattern, new)))
            if (
                len(node.ops) == 1
                and all(isinstance(o, ast.Name) for o in operands)
                and operands[0].id != operands[1].id
            ):
                a, b = operands
                candidates.append(
                    make("swap_vars", node, (src.start(a), src.end(a), b.id), (src.start(b), src.end(b), a.id))
                )
        elif isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            pattern, new = _ARITH[type(node.op)]
            if not (isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant)):  # "%s" % x formatting
                candidates.append(make("arith", node, _gap_edit(src, node.left, node.right, pattern, new)))
            a, b = node.left, node.right
            if isinstance(a, ast.Name) and isinstance(b, ast.Name) and a.id != b.id:
                candidates.append(
                    make("swap_vars", node, (src.start(a), src.end(a), b.id), (src.start(b), src.end(b), a.id))
                )
        elif isinstance(node, ast.AugAssign) and type(node.op) in _ARITH:
            pattern, new = _ARITH[type(node.op)]
            candidates.append(make("arith", node, _gap_edit(src, node.target, node.value, pattern + "=", new + "=")))
        elif isinstance(node, ast.BoolOp):
            pattern, new = _BOOL[type(node.op)]
            candidates.append(make("boolean", node, _gap_edit(src, node.values[0], node.values[1], pattern, new)))
        elif isinstance(node, ast.Call):
            args = node.args
            plain = not any(isinstance(a, ast.Starred) for a in args)
            if isinstance(node.func, ast.Name) and node.func.id == "range" and plain and 1 <= len(args) <= 3:
                stop = args[0] if len(args) == 1 else args[1]
                candidates.append(make("off_by_one", stop, _shifted(src, stop, -1)))
                candidates.append(make("off_by_one", stop, _shifted(src, stop, +1)))
            if plain and len(args) >= 2:
                candidates.append(make("drop_arg", node, (src.end(args[-2]), src.end(args[-1]), "")))
                if src.seg(args[0]) != src.seg(args[1]):
                    a, b = args[0], args[1]
                    candidates.append(
                        make(
                            "swap_args",
                            node,
                            (src.start(a), src.end(a), src.seg(b)),
                            (src.start(b), src.end(b), src.seg(a)),
                        )
                    )
            elif plain and len(args) == 1 and not node.keywords:
                candidates.append(make("drop_arg", node, (src.start(args[0]), src.end(args[0]), "")))
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            index = node.slice
            if isinstance(index, ast.Slice):
                for bound in (index.lower, index.upper):
                    if bound is not None:
                        candidates.append(make("off_by_one", bound, _shifted(src, bound, +1)))
                        candidates.append(make("off_by_one", bound, _shifted(src, bound, -1)))
            elif _int_literal(index) is not None:
                candidates.append(make("off_by_one", index, _shifted(src, index, +1)))
                candidates.append(make("off_by_one", index, _shifted(src, index, -1)))
        elif isinstance(node, (ast.If, ast.While, ast.IfExp)):
            test = node.test
            if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
                edit = (
                    src.start(test),
                    src.end(test),
                    src.seg(test.operand) if isinstance(test.operand, _ATOMS) else f"({src.seg(test.operand)})",
                )
            else:
                text = src.seg(test)
                edit = (src.start(test), src.end(test), f"not {text}" if isinstance(test, _ATOMS) else f"not ({text})")
            candidates.append(make("negate", test, edit))
    for node in [func.node, *nodes]:
        if isinstance(node, ast.stmt):
            for body in _bodies(node):
                for stmt in body:
                    if isinstance(stmt, (ast.Assign, ast.AugAssign)) or (
                        isinstance(stmt, ast.AnnAssign) and stmt.value is not None
                    ):
                        candidates.append(make("remove_statement", stmt, *(_removal(src, stmt, body) or (None,))))
                    elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                        candidates.append(make("remove_statement", stmt, *(_removal(src, stmt, body) or (None,))))
                    elif isinstance(stmt, ast.Return) and stmt.value is not None:
                        candidates.append(make("remove_return", stmt, *(_removal(src, stmt, body) or (None,))))
                    elif isinstance(stmt, ast.If):
                        if not stmt.orelse:
                            candidates.append(make("remove_branch", stmt, *(_removal(src, stmt, body) or (None,))))
                        else:
                            candidates.append(make("remove_branch", stmt, *(_else_removal(src, stmt) or (None,))))
    for mutation in candidates:
        if mutation is not None and not _is_noop(mutation, src):
            yield mutation


def _is_noop(mutation: Mutation, src: _Source) -> bool:
    return all(src.text(start, end) == text for start, end, text in mutation.edits)


def import_mutations(path: str, src: _Source, tree: ast.Module, funcs: list[Function]) -> Iterator[Mutation]:
    """Remove a module-level import whose name is used only inside functions (so the module still imports)."""
    module_level: set[str] = set()
    stack = [n for n in tree.body if not isinstance(n, (ast.Import, ast.ImportFrom))]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            module_level.update(
                n.id for d in getattr(node, "decorator_list", []) for n in ast.walk(d) if isinstance(n, ast.Name)
            )
            continue
        if isinstance(node, ast.Name):
            module_level.add(node.id)
        stack.extend(ast.iter_child_nodes(node))
    used_in: dict[str, list[Function]] = {}
    for func in funcs:
        for node in own_nodes(func.node):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                used_in.setdefault(node.id, [])
                if func not in used_in[node.id]:
                    used_in[node.id].append(func)
    for stmt in tree.body:
        if not isinstance(stmt, (ast.Import, ast.ImportFrom)) or (
            isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__"
        ):
            continue
        for alias in stmt.names:
            name = alias.asname or alias.name.split(".")[0]
            if name == "*" or name in module_level or name not in used_in:
                continue
            users = used_in[name]
            if len(stmt.names) == 1:
                edits = _removal(src, stmt, tree.body)
                if edits is None:
                    continue
            else:
                rest = [a for a in stmt.names if a is not alias]
                clone = (
                    ast.ImportFrom(stmt.module, rest, stmt.level)
                    if isinstance(stmt, ast.ImportFrom)
                    else ast.Import(rest)
                )
                edits = ((src.start(stmt), src.end(stmt), ast.unparse(clone)),)
            yield Mutation(
                path,
                users[0].qualname,
                users[0].first_line,
                "remove_import",
                stmt.lineno,
                edits,
                users=tuple(f.first_line for f in users),
            )


def module_mutations(
    path: str, source: str, covered_lines: set[int] | None = None, check_parse: bool = True
) -> list[Mutation]:
    """The mutations of one module, in the covered functions only (all functions when None).

    Mutations with the same edits appear once. With `check_parse`, only those whose result parses
    (off, a caller that tries a few of thousands parses just those: a big module takes ~10 ms a parse)."""
    tree = ast.parse(source)
    src = _Source(source)
    funcs = [f for f in functions(tree) if covered_lines is None or f.first_line in covered_lines]
    seen: set[str] = set()
    out: list[Mutation] = []
    for mutation in [m for f in funcs for m in function_mutations(path, src, f)] + list(
        import_mutations(path, src, tree, funcs)
    ):
        if mutation.key in seen:
            continue
        seen.add(mutation.key)
        if check_parse:
            try:
                ast.parse(mutation.apply(source))
            except (SyntaxError, ValueError):
                continue
        out.append(mutation)
    return out
