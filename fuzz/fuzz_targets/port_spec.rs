//! `PORT[/PROTO]` and `LOW-HIGH[/PROTO]` as operators type them.
#![no_main]

use ingress_xdp::spec::PortSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(spec) = text.parse::<PortSpec>() else {
        return;
    };
    // Port 0 is never a rule, and a range is never inverted.
    assert!(spec.low >= 1, "{text:?} gave port 0");
    assert!(spec.low <= spec.high, "{text:?} gave an inverted range");
    assert_eq!(spec.len(), usize::from(spec.high - spec.low) + 1);
    assert_eq!(spec.ports().count(), spec.len());
    // What we print (in `list`, in errors) parses back to the same rule.
    let shown = spec.to_string();
    assert_eq!(
        shown.parse::<PortSpec>(),
        Ok(spec),
        "{text:?} shown as {shown:?}"
    );
});
