"""Line count and longest function of every module: the measure issue 16 asks for.

    python scripts/code_stats.py resnet_jax train.py benchmarks [--markdown]   # the default roots

Lines are physical lines of the file; a function's length runs from its ``def`` (decorators
excluded) to its last line, nested functions counted inside their parent.
"""

from __future__ import annotations

import argparse
import ast
import pathlib


def longest_function(path: pathlib.Path) -> tuple[str, int]:
    """(qualified name, lines) of the longest function or method in ``path``; ("-", 0) if none."""
    tree = ast.parse(path.read_text(), filename=str(path))
    best = ("-", 0)

    def visit(node: ast.AST, prefix: str) -> None:
        nonlocal best
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                length = child.end_lineno - child.lineno + 1
                if length > best[1]:
                    best = (name, length)
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return best


def module_stats(roots: list[str]) -> list[tuple[str, int, str, int]]:
    """(module path, lines, longest function, its lines) for every .py file under ``roots``."""
    rows = []
    for root in roots:
        base = pathlib.Path(root)
        files = [base] if base.is_file() else sorted(base.rglob("*.py"))
        for path in files:
            name, length = longest_function(path)
            rows.append((str(path), len(path.read_text().splitlines()), name, length))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("roots", nargs="*", default=["resnet_jax", "train.py", "benchmarks"])
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = p.parse_args()
    rows = module_stats(args.roots)
    if args.markdown:
        print("| module | lines | longest function | its lines |\n|---|---|---|---|")
        for path, lines, name, length in rows:
            print(f"| `{path}` | {lines} | `{name}` | {length} |")
    else:
        for path, lines, name, length in rows:
            print(f"{path:48s} {lines:5d}  {name} ({length})")


if __name__ == "__main__":
    main()
