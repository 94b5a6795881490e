//! The catalog keys the balancer owns, built and parsed here and nowhere else: balancer
//! specs under `lb/balancers/<name>`, and the name of each balancer's VIP lease,
//! `lb/vip/<name>` (its record lives under the lease layer's own prefix, `leases/`).

/// Where balancer specs live.
pub const BALANCERS_PREFIX: &str = "lb/balancers/";

/// The key of balancer `name`'s spec.
pub fn balancer_key(name: &str) -> String {
    format!("{BALANCERS_PREFIX}{name}")
}

/// The name of the lease that guards balancer `name`'s VIP.
pub fn vip_lease_name(balancer: &str) -> String {
    format!("lb/vip/{balancer}")
}

/// The catalog key of that lease's record.
pub fn vip_lease_key(balancer: &str) -> String {
    bramble_meta::lease::lease_key(&vip_lease_name(balancer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_built_under_their_prefixes() {
        assert_eq!(balancer_key("web"), "lb/balancers/web");
        assert!(balancer_key("web").starts_with(BALANCERS_PREFIX));
        assert_eq!(vip_lease_key("web"), "leases/lb/vip/web");
        assert!(bramble_meta::lease::validate_lease_name(&vip_lease_name("web-1")).is_ok());
    }
}
