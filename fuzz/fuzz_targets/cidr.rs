//! `--allow-from` prefixes: `ADDR/LEN` or a bare address.
#![no_main]

use ingress_xdp::cidr::Cidr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(cidr) = text.parse::<Cidr>() else {
        return;
    };
    let max = if cidr.addr().is_ipv4() { 32 } else { 128 };
    assert!(cidr.prefix_len() <= max, "{text:?}: /{} too long", cidr.prefix_len());
    // No host bits: the prefix is its own canonical form, and holds itself.
    assert_eq!(Cidr::new(cidr.addr(), cidr.prefix_len()), Some(cidr));
    assert!(cidr.contains(cidr.addr()));
    // Printed and parsed back, it is the same prefix.
    let shown = cidr.to_string();
    assert_eq!(
        shown.parse::<Cidr>(),
        Ok(cidr),
        "{text:?} shown as {shown:?}"
    );
});
