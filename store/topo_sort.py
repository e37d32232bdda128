"""`topoSort` (libutil/topo-sort.hh): depth-first, referrers before references, cycles are errors.

Iterative, so a chain of 100,000 paths does not exhaust Python's recursion
limit; it visits in exactly the order Nix's recursive version does (items in
sorted order, children in sorted order), so the output matches Nix's.
"""

from __future__ import annotations

from typing import Callable, Hashable, Iterable, TypeVar

T = TypeVar("T", bound=Hashable)


def topo_sort(
    items: Iterable[T],
    get_children: Callable[[T], Iterable[T]],
    make_cycle_error: Callable[[T, T], Exception],
) -> list[T]:
    """Sort `items` so that every item comes before its children; children outside `items` are ignored.

    Raises:
        make_cycle_error(path, parent): a cycle reached `path` again from `parent`.
    """
    item_set = set(items)
    ordered: list[T] = []
    visited: set[T] = set()
    parents: set[T] = set()
    for root in sorted(item_set):
        if root in visited:
            continue
        visited.add(root)
        parents.add(root)
        stack: list[tuple[T, list[T]]] = [(root, _children(root, item_set, get_children))]
        while stack:
            node, children = stack[-1]
            while children:
                child = children.pop()
                if child in parents:
                    raise make_cycle_error(child, node)
                if child in visited:
                    continue
                visited.add(child)
                parents.add(child)
                stack.append((child, _children(child, item_set, get_children)))
                break
            else:
                stack.pop()
                parents.discard(node)
                ordered.append(node)
    ordered.reverse()
    return ordered


def _children(node: T, item_set: set[T], get_children: Callable[[T], Iterable[T]]) -> list[T]:
    # Reversed so that pop() yields them in ascending order, as Nix's std::set iteration does.
    return sorted((c for c in get_children(node) if c != node and c in item_set), reverse=True)
