"""The step dependency graph of a definition being validated: strongly connected
components (cycles), a shortest cycle to report, and upstream queries for references."""

from __future__ import annotations

from collections import deque

__all__ = ["DependencyGraph", "cycle_text"]


def cycle_text(ids: list[str]) -> str:
    """``a -> b -> c -> a``; long cycles keep their first and last ten steps."""
    if len(ids) > 21:
        hidden = len(ids) - 20
        ids = [*ids[:10], f"... ({hidden} more steps) ...", *ids[-10:]]
    return " -> ".join(ids)


class DependencyGraph:
    """Step dependency graph: an edge ``step -> dependency`` per ``depends_on`` entry."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.edges: list[list[int]] = [[] for _ in range(size)]
        self.positions: list[list[int]] = [[] for _ in range(size)]
        self.direct: list[set[int]] = [set() for _ in range(size)]
        self._component: list[int] = []
        self._components: list[list[int]] | None = None
        self._ancestors: list[int] | None = None

    def add_edge(self, step: int, dependency: int, position: int) -> None:
        self.edges[step].append(dependency)
        self.positions[step].append(position)
        self.direct[step].add(dependency)

    def components(self) -> list[list[int]]:
        """Strongly connected components (iterative Tarjan), dependencies first."""
        if self._components is not None:
            return self._components
        n = self.size
        order = [-1] * n
        low = [0] * n
        on_stack = [False] * n
        stack: list[int] = []
        component = [-1] * n
        components: list[list[int]] = []
        counter = 0
        for root in range(n):
            if order[root] != -1:
                continue
            order[root] = low[root] = counter
            counter += 1
            stack.append(root)
            on_stack[root] = True
            work: list[tuple[int, int]] = [(root, 0)]
            while work:
                v, i = work[-1]
                edges = self.edges[v]
                if i < len(edges):
                    work[-1] = (v, i + 1)
                    w = edges[i]
                    if order[w] == -1:
                        order[w] = low[w] = counter
                        counter += 1
                        stack.append(w)
                        on_stack[w] = True
                        work.append((w, 0))
                    elif on_stack[w] and order[w] < low[v]:
                        low[v] = order[w]
                    continue
                work.pop()
                if work:
                    parent = work[-1][0]
                    if low[v] < low[parent]:
                        low[parent] = low[v]
                if low[v] == order[v]:
                    members: list[int] = []
                    while True:
                        w = stack.pop()
                        on_stack[w] = False
                        component[w] = len(components)
                        members.append(w)
                        if w == v:
                            break
                    components.append(sorted(members))
        self._component = component
        self._components = components
        return components

    def shortest_cycle(self, members: list[int]) -> tuple[list[int], int]:
        """A shortest cycle through the lowest-index member of a component.

        Returns the cycle as step indices (first repeated at the end) and the
        ``depends_on`` position of its first edge.
        """
        start = members[0]
        comp = self._component[start]
        parent: dict[int, int] = {start: -1}
        queue = deque([start])
        while queue:
            v = queue.popleft()
            for w in self.edges[v]:
                if self._component[w] != comp:
                    continue
                if w == start:
                    path = [v]
                    while parent[path[-1]] != -1:
                        path.append(parent[path[-1]])
                    path.reverse()  # start ... v
                    cycle = [*path, start]
                    position = self.positions[start][self.edges[start].index(cycle[1])]
                    return cycle, position
                if w not in parent:
                    parent[w] = v
                    queue.append(w)
        raise AssertionError("a strongly connected component of 2+ steps has a cycle")

    def is_upstream(self, candidate: int, step: int) -> bool:
        """Whether ``candidate`` is a (transitive) dependency of ``step``."""
        if candidate in self.direct[step]:
            return True
        return bool((self.ancestors()[step] >> candidate) & 1)

    def ancestors(self) -> list[int]:
        """Bitset of transitive dependencies per step, built once over the SCC order."""
        if self._ancestors is not None:
            return self._ancestors
        components = self.components()
        ancestors = [0] * self.size
        for number, members in enumerate(components):
            bits = 0
            for v in members:
                for w in self.edges[v]:
                    if self._component[w] != number:
                        bits |= ancestors[w] | (1 << w)
                    else:
                        bits |= 1 << w
            for v in members:
                ancestors[v] = bits
        self._ancestors = ancestors
        return ancestors
