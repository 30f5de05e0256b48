"""What the grader reads in a submission's source, without running it: the flags for the teacher.

- **internals**: the notebook reaches the checks' internals (``mmlm_course.exercises`` beyond
  ``check``: the registry, a check's ``reference``, ``run_check``): its exercises are not graded.
- **course**: an exercise's answer uses the course's own implementation of it
  (``preprocessing.to_float_image`` for ``01.to_float_image``): inside the learner's function,
  bound to its name, or through a helper name bound to it: the mark stands, flagged.
- **dynamic**: the notebook builds code or names at run time (``exec``, ``__import__``,
  ``importlib``, ``getattr`` with a computed name, a function's ``__globals__``, writing to a
  file descriptor...): what that code reaches cannot be read, so every mark it gets is flagged.

Cells are read as IPython runs them: magics and ``!`` commands are translated first, and the
body of a cell magic (``%%capture``) or any string that is itself Python (``exec("...")``) is
read too. Code that hides itself further (names assembled at run time) is only caught by the
``dynamic`` flag; a function that copies the course's code earns its mark like any correct one.
"""

from __future__ import annotations

import ast

MAX_SOURCE_CHARS = 2_000_000          # code the grader reads (a notebook with more is not graded)
_NESTED = 3                           # strings inside strings inside cells, at most
# the names that lead to a reference; ``.reference`` itself is left out, as honest code may use the word
# (``row["reference"]``) and every way to a check's entry goes through one of these
_INTERNAL_ATTRS = {"registry", "_REGISTRY", "_lookup", "run_check", "Checker"}
_ATTR_CALLS = {"getattr", "setattr", "delattr", "hasattr"}
_DYNAMIC_CALLS = {"exec", "eval", "compile", "__import__", "globals", "locals", "vars"}
_DYNAMIC_MODULES = {"importlib", "imp", "runpy", "pkgutil", "codeop", "code", "marshal", "ctypes", "gc", "inspect",
                    "zipimport", "cffi"}
_DYNAMIC_ATTRS = {"__globals__", "__code__", "__closure__", "__builtins__", "__subclasses__", "__dict__", "__loader__",
                  "__spec__", "__wrapped__", "__import__", "f_globals", "f_locals", "f_back", "f_code", "gi_frame",
                  "tb_frame", "_getframe", "_current_frames", "FunctionType", "CodeType", "ModuleType"}
# attributes that count only on these modules: ``sys.modules``; ``os.write(fd, ...)`` (the grader's
# channel is a file descriptor)
_MODULE_ATTRS = {"modules": {"sys"}, **{name: {"os", "posix"} for name in
                                          ("write", "writev", "pwrite", "fdopen", "dup", "dup2", "sendfile")}}
_RUN_MAGICS = {"run", "load", "loadpy", "writefile", "script", "python", "python3", "bash", "sh"}


def python_trees(source: str) -> list[tuple[ast.AST, bool]]:
    """The Python a cell runs, parsed: the cell as IPython translates it and the body of each
    cell magic (code: True), and every string in them that may be Python too (``exec``'s
    argument; code: False, as a docstring may read as code), to a few levels."""
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        source = TransformerManager().transform_cell(source)
    except Exception:                          # IPython's own error on odd input: read the text as it is
        pass
    trees, todo = [], [(source, 0, True)]
    while todo:
        text, depth, code = todo.pop()
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        trees.append((tree, code))
        if depth < _NESTED:
            bodies = {id(n.args[2]) for n in ast.walk(tree) if code and isinstance(n, ast.Call) and isinstance(
                n.func, ast.Attribute) and n.func.attr == "run_cell_magic" and len(n.args) == 3}
            todo += [(n.value, depth + 1, id(n) in bodies) for n in ast.walk(tree) if isinstance(n, ast.Constant)
                     and isinstance(n.value, str) and any(mark in n.value for mark in "\n(.=;")]
    return trees


def uses_internals(tree: ast.AST) -> bool:
    """Whether code reaches the checks' internals: ``mmlm_course.exercises`` beyond ``check``."""
    allowed = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "check"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmlm_course.exercises"):
            if node.module != "mmlm_course.exercises" or any(a.name != "check" for a in node.names):
                return True
        elif isinstance(node, ast.ImportFrom) and node.module == "mmlm_course" and any(
                a.name == "exercises" for a in node.names):
            return True
        elif isinstance(node, ast.Import) and any(a.name.startswith("mmlm_course.exercises") for a in node.names):
            return True
        elif isinstance(node, ast.Attribute) and (node.attr in _INTERNAL_ATTRS or (
                node.attr == "exercises" and id(node) not in allowed) or (
                isinstance(node.value, ast.Name) and node.value.id == "exercises" and node.attr != "check")):
            return True
        elif isinstance(node, ast.Name) and node.id in ("registry", "_REGISTRY", "run_check"):
            return True
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _ATTR_CALLS and len(
                node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value in _INTERNAL_ATTRS:
            return True                           # getattr(entry, "reference")
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and \
                node.slice.value in _INTERNAL_ATTRS | {"checker"}:
            return True                           # check.__globals__["_REGISTRY"]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "mmlm_course.exercises" in node.value:
            return True
    return False


def dynamic_code(tree: ast.AST, modules: set[str]) -> set[str]:
    """What in ``tree`` builds code or names at run time (see the module's docstring); ``modules``:
    the names of the course's modules."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            if name in _DYNAMIC_CALLS:
                found.add(name)
            elif name in _ATTR_CALLS and len(node.args) > 1 and not isinstance(node.args[1], ast.Constant) and (
                    not isinstance(node.args[1], ast.Name) or (
                        isinstance(node.args[0], ast.Name) and node.args[0].id in modules)):
                found.add(f"{name} with a computed name")   # getattr(preprocessing, "to_float" + "_image")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "run_line_magic", "run_cell_magic") and node.args and isinstance(node.args[0], ast.Constant) \
                and node.args[0].value in _RUN_MAGICS:
            found.add(f"%{node.args[0].value}")
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in _DYNAMIC_MODULES}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _DYNAMIC_MODULES:
            found.add(node.module)
        elif isinstance(node, ast.Attribute) and node.attr in _DYNAMIC_ATTRS:
            found.add(node.attr)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id in _MODULE_ATTRS.get(node.attr, ()):
            found.add(f"{node.value.id}.{node.attr}")
    return found


def course_modules(tree: ast.AST) -> set[str]:
    """The names ``tree`` binds to the course's modules (``from mmlm_course import preprocessing``)."""
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mmlm_course":
            modules |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("mmlm_course")}
    return modules


def course_aliases(tree: ast.AST, modules: set[str], names: set[str]) -> set[str]:
    """The names ``tree`` binds to the course's ``names`` (read from its ``modules``):
    ``f = preprocessing.to_float_image``, ``from mmlm_course.preprocessing import to_float_image``."""
    def reads_course(node: ast.AST) -> bool:      # the function itself, or a lambda that calls it
        for part in ast.walk(node) if isinstance(node, ast.Lambda) else [node]:
            if isinstance(part, ast.Attribute) and part.attr in names:
                root = part.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in modules:
                    return True
        return False

    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mmlm_course":
            aliases |= {a.asname or a.name for a in node.names if a.name in names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.NamedExpr)) and node.value is not None \
                and reads_course(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            aliases |= {n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)}
    return aliases


def flags(exercises: list, cells: list[str], references: dict) -> tuple[dict, set]:
    """Exercise id -> "internals" or the course function its answer uses; and the run-time code
    found in the notebook. ``exercises``: ``[(id, function name)]``; ``cells``: the code cells'
    sources; ``references``: id -> its reference."""
    trees = [tree for source in cells for tree in python_trees(source)]
    if any(uses_internals(tree) for tree, _ in trees):
        return {exercise_id: "internals" for exercise_id, _ in exercises}, set()
    code = [tree for tree, is_code in trees if is_code]
    modules = {"mmlm_course"}.union(*map(course_modules, code))
    dynamic = set().union(*(dynamic_code(tree, modules) for tree in code))
    found = {}
    for exercise_id, function in exercises:
        reference = references.get(exercise_id)
        names = {exercise_id.split(".", 1)[1], getattr(reference, "__name__", "")} - {"", "<lambda>"}
        aliases = set().union(*(course_aliases(tree, modules, names) for tree in code))
        if function in aliases:                  # to_float_image = preprocessing.to_float_image
            found[exercise_id] = min(names)
        for tree in code:
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == function:
                    used = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)} & names
                    if {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & aliases:
                        used.add(min(names))     # through a helper name bound to it
                    if used and exercise_id not in found:
                        found[exercise_id] = sorted(used)[0]
    return found, dynamic
