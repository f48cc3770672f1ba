//! The links of a partitionable cluster ([`crate::Stack::start_partitionable_cluster`]):
//! every route from one node to another and every client connection to a node runs
//! through a [`TcpProxy`] of the test's own, so one node can be cut off from its peers
//! and its clients at once, and brought back, while it keeps running and keeps its
//! state, as in a network partition. Everything stays on loopback.

use std::sync::Mutex;

use crate::TcpProxy;
use crate::nats::PartitionablePorts;

pub(crate) struct Links {
    /// `routes[i][j]`: node i's route to node j (`None` where i = j).
    routes: Vec<Vec<Option<TcpProxy>>>,
    /// `clients[i]`: the port clients reach node i on.
    clients: Vec<TcpProxy>,
    /// `listen[i]`: node i's own route port, which only proxies dial.
    listen: Vec<u16>,
    monitors: Vec<u16>,
    /// Bound and never listening, so a connection to it is refused: the route address
    /// every node advertises (see `partitionable_node_config`).
    nowhere: tokio::net::TcpSocket,
    /// The nodes cut off now. A std mutex: held only to flip a flag, never across an
    /// await.
    cut_off: Mutex<Vec<bool>>,
}

impl Links {
    /// Proxies for a cluster whose nodes take clients on `client_ports` and routes on
    /// `route_ports`.
    pub(crate) async fn start(client_ports: &[u16], route_ports: &[u16]) -> Self {
        let size = client_ports.len();
        let mut routes = Vec::with_capacity(size);
        for from in 0..size {
            let mut row = Vec::with_capacity(size);
            for (to, port) in route_ports.iter().enumerate() {
                row.push(if from == to {
                    None
                } else {
                    Some(TcpProxy::start(format!("127.0.0.1:{port}")).await)
                });
            }
            routes.push(row);
        }
        let mut clients = Vec::with_capacity(size);
        for port in client_ports {
            clients.push(TcpProxy::start(format!("127.0.0.1:{port}")).await);
        }
        let nowhere = tokio::net::TcpSocket::new_v4().expect("a socket for the advertised route address");
        nowhere.bind(([127, 0, 0, 1], 0).into()).expect("binding the advertised route address");
        Self {
            routes,
            clients,
            listen: route_ports.to_vec(),
            monitors: (0..size).map(|_| crate::free_port()).collect(),
            nowhere,
            cut_off: Mutex::new(vec![false; size]),
        }
    }

    /// What node `index` is configured with.
    pub(crate) fn ports(&self, index: usize) -> PartitionablePorts {
        PartitionablePorts {
            listen: self.listen[index],
            peers: self.routes[index].iter().flatten().map(TcpProxy::port).collect(),
            nowhere: self.nowhere.local_addr().expect("the advertised route address").port(),
            monitor: self.monitors[index],
        }
    }

    /// The port clients reach node `index` on.
    pub(crate) fn client_port(&self, index: usize) -> u16 {
        self.clients[index].port()
    }

    /// The monitoring port of node `index`.
    pub(crate) fn monitor_port(&self, index: usize) -> u16 {
        self.monitors[index]
    }

    /// Cuts node `index` off: its routes both ways and its clients' connections drop,
    /// and new ones are refused.
    pub(crate) fn cut(&self, index: usize) {
        self.cut_off.lock().expect("the partition flags")[index] = true;
        self.clients[index].cut();
        for other in 0..self.clients.len() {
            self.link(index, other).for_each(TcpProxy::cut);
        }
    }

    /// Brings node `index` back: its clients' port and every route to a node that is
    /// not cut off itself.
    pub(crate) fn restore(&self, index: usize) {
        let mut cut_off = self.cut_off.lock().expect("the partition flags");
        cut_off[index] = false;
        self.clients[index].restore();
        for other in (0..self.clients.len()).filter(|other| !cut_off[*other]) {
            self.link(index, other).for_each(TcpProxy::restore);
        }
    }

    /// The proxies between two nodes, both ways (none for a node and itself).
    fn link(&self, a: usize, b: usize) -> impl Iterator<Item = &TcpProxy> {
        [&self.routes[a][b], &self.routes[b][a]].into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{Stack, eventually};

    /// nats-server's followers wait 4 to 9 s for a lost leader before they elect
    /// another; routes come back within a second of a heal.
    const SETTLE: Duration = Duration::from_secs(20);

    fn peers_of(node: usize) -> Vec<String> {
        (0..3).filter(|other| *other != node).map(|other| format!("n{other}")).collect()
    }

    async fn leader_of(stack: &Stack, stream: &str) -> String {
        eventually(SETTLE, "a leader of the incidents stream", || async {
            let mut stream = stack.jetstream().await.get_stream(stream).await.ok()?;
            stream.info().await.ok()?.cluster.clone()?.leader
        })
        .await
    }

    #[tokio::test]
    async fn a_partitioned_node_loses_every_route_while_the_others_serve_and_gets_them_back() {
        let stack = Stack::start_partitionable_cluster(3).await;
        for node in 0..3 {
            eventually(SETTLE, "a full mesh of routes", || async {
                (stack.route_peers(node).await == peers_of(node)).then_some(())
            })
            .await;
        }
        let stream = stack.topology.incidents_stream.clone();
        let leader = leader_of(&stack, &stream).await;
        let cut: usize = leader.trim_start_matches('n').parse().expect("nodes are named n0, n1, ...");

        stack.partition(cut);
        // Every route goes through a proxy: none survives the cut.
        eventually(SETTLE, "the cut-off node without routes", || async {
            stack.route_peers(cut).await.is_empty().then_some(())
        })
        .await;
        for node in (0..3).filter(|node| *node != cut) {
            let others: Vec<String> = peers_of(node).into_iter().filter(|peer| *peer != leader).collect();
            assert_eq!(stack.route_peers(node).await, others, "n{node} keeps its route to the other side");
        }
        // The two left elect a leader of their own and acknowledge a publish.
        let js = stack.jetstream().await;
        let subject = stack.topology.subjects.incident_created();
        eventually(SETTLE, "a publish acknowledged without the cut-off node", || async {
            js.publish(subject.clone(), "partitioned".into()).await.ok()?.await.ok()
        })
        .await;
        assert_ne!(leader_of(&stack, &stream).await, leader, "the cut-off node still leads for the others");

        stack.heal(cut);
        eventually(SETTLE, "the healed node's routes back", || async {
            (stack.route_peers(cut).await == peers_of(cut)).then_some(())
        })
        .await;
        stack.wait_replicas_current().await;
    }
}
