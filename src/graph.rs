//! The stage graph's order (petgraph): a topological order of the stages, or one cycle named
//! stage by stage. It works on indices and edges only, and knows nothing of pipelines.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

/// Edges `from → to` between `n` nodes: a topological order, or one cycle as node indices
/// (first node repeated at the end). Of the nodes ready at each point, the lowest index comes
/// first, so stages run and print in the file's order where their inputs allow.
pub fn order(n: usize, edges: &[(usize, usize)]) -> Result<Vec<usize>, Vec<usize>> {
    let mut g: DiGraph<usize, ()> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..n).map(|i| g.add_node(i)).collect();
    for &(a, b) in edges {
        g.add_edge(nodes[a], nodes[b], ());
    }
    if toposort(&g, None).is_err() {
        return Err(find_cycle(&g));
    }
    // Kahn's algorithm with the ready nodes in a min-heap.
    let mut waiting: Vec<usize> =
        nodes.iter().map(|&ix| g.neighbors_directed(ix, petgraph::Incoming).count()).collect();
    let mut ready: BinaryHeap<Reverse<usize>> = (0..n).filter(|&i| waiting[i] == 0).map(Reverse).collect();
    let mut out = Vec::with_capacity(n);
    while let Some(Reverse(i)) = ready.pop() {
        out.push(i);
        for next in g.neighbors_directed(nodes[i], petgraph::Outgoing) {
            let j = g[next];
            waiting[j] -= 1;
            if waiting[j] == 0 {
                ready.push(Reverse(j));
            }
        }
    }
    Ok(out)
}

/// A cycle inside the first strongly connected component that has one.
fn find_cycle(g: &DiGraph<usize, ()>) -> Vec<usize> {
    let scc =
        tarjan_scc(g).into_iter().find(|c| c.len() > 1 || g.contains_edge(c[0], c[0])).expect("toposort found a cycle");
    let start = scc[0];
    // Breadth-first from `start` inside the component until we come back to it.
    let mut parent: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for next in g.neighbors(node) {
            if next == start {
                // Walk the parents back from `node` to `start`, then close the loop.
                let mut chain = vec![node];
                while *chain.last().expect("not empty") != start {
                    chain.push(parent[chain.last().expect("not empty")]);
                }
                let mut cycle: Vec<usize> = chain.iter().rev().map(|&ix| g[ix]).collect();
                cycle.push(g[start]);
                return cycle;
            }
            if scc.contains(&next) && !parent.contains_key(&next) && next != start {
                parent.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    unreachable!("a strongly connected component has a cycle through each node")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_inputs_first() {
        let order = order(3, &[(2, 1), (1, 0)]).unwrap();
        assert_eq!(order, [2, 1, 0]);
        // Otherwise the file's order: 0 and 2 are ready at once, 1 waits for 2.
        assert_eq!(super::order(4, &[(2, 1), (0, 3)]).unwrap(), [0, 2, 1, 3]);
    }

    #[test]
    fn names_the_cycle() {
        // 0 → 1 → 2 → 0, and 3 hangs off it.
        let cycle = order(4, &[(0, 1), (1, 2), (2, 0), (2, 3)]).unwrap_err();
        assert_eq!(cycle.len(), 4);
        assert_eq!(cycle.first(), cycle.last());
        for w in cycle.windows(2) {
            assert!([(0, 1), (1, 2), (2, 0)].contains(&(w[0], w[1])), "{cycle:?}");
        }
        assert_eq!(order(1, &[(0, 0)]).unwrap_err(), [0, 0]);
    }
}
