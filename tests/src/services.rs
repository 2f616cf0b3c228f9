//! Services and Endpoints for the proxy's tests and bench.

use bramble_api::meta::IntOrString;
use bramble_api::service::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort,
};

/// `n` Services `default/svc-<i>` (port 80 to 8080, ClusterIPs from 10.43.0.1), each with
/// `each` ready endpoints, except the first, which has `first` (and `first_node_port`).
pub fn cluster(
    n: usize,
    each: usize,
    first: usize,
    first_node_port: Option<i32>,
) -> (Vec<Service>, Vec<Endpoints>) {
    let (mut services, mut endpoints) = (Vec::new(), Vec::new());
    for i in 0..n {
        let mut s = Service::default();
        s.metadata.name = format!("svc-{i}");
        s.metadata.namespace = "default".into();
        s.spec.cluster_ip = format!("10.43.{}.{}", i / 250, i % 250 + 1);
        s.spec.ports = vec![ServicePort {
            name: "http".into(),
            port: 80,
            target_port: Some(IntOrString::Int(8080)),
            node_port: if i == 0 { first_node_port } else { None },
            ..Default::default()
        }];
        let k = if i == 0 { first } else { each };
        endpoints.push(Endpoints {
            metadata: s.metadata.clone(),
            subsets: vec![EndpointSubset {
                addresses: (0..k)
                    .map(|j| EndpointAddress {
                        ip: format!("10.42.{j}.{}", i % 250 + 2),
                        ..Default::default()
                    })
                    .collect(),
                ports: vec![EndpointPort {
                    name: "http".into(),
                    port: 8080,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
        services.push(s);
    }
    (services, endpoints)
}
