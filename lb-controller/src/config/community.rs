//! BGP community values as MetalLB writes them: `A:B` (a standard community, RFC 1997, 16 bits
//! each) or `large:X:Y:Z` (a large community, RFC 8092, 32 bits each). One parser, used by
//! validation to explain a bad value and by the BGP planner to send a good one.
use std::collections::BTreeMap;

/// A parsed community.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Community {
    /// `A:B`, as the 32-bit value `A << 16 | B`.
    Standard(u32),
    /// `large:X:Y:Z`.
    Large([u32; 3]),
}

impl Community {
    /// Parses a literal value; the error says what the value should look like.
    pub fn parse(value: &str) -> Result<Self, String> {
        if let Some(large) = value.strip_prefix("large:") {
            let parts: Vec<u32> = large
                .split(':')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .unwrap_or_default();
            return match parts[..] {
                [x, y, z] => Ok(Community::Large([x, y, z])),
                _ => Err(format!(
                    "{value:?} is not a large community (large:X:Y:Z, each 0..=4294967295)"
                )),
            };
        }
        let standard = value
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)));
        match standard {
            Some((a, b)) => Ok(Community::Standard(u32::from(a) << 16 | u32::from(b))),
            None => Err(format!(
                "{value:?} is not a community (A:B, each 0..=65535)"
            )),
        }
    }

    /// Parses what a BGPAdvertisement lists: a literal (it has a `:`) or the name of an alias
    /// from a Community object (`aliases`: name → value).
    pub fn resolve(text: &str, aliases: &BTreeMap<String, String>) -> Result<Self, String> {
        if text.contains(':') {
            return Self::parse(text);
        }
        match aliases.get(text) {
            Some(value) => Self::parse(value),
            None => Err(format!(
                "{text:?} is neither a community value nor a Community alias"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_and_large_values_parse_and_out_of_range_ones_do_not() {
        assert_eq!(
            Community::parse("65000:100"),
            Ok(Community::Standard(65000 << 16 | 100))
        );
        assert_eq!(
            Community::parse("large:4200000000:1:2"),
            Ok(Community::Large([4_200_000_000, 1, 2]))
        );
        for bad in [
            "65536:1",
            "1:2:3",
            "1",
            "large:1:2",
            "large:1:2:3:4",
            "large:1:x:3",
            "",
        ] {
            assert!(Community::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn aliases_resolve_and_unknown_names_are_explained() {
        let aliases = BTreeMap::from([("NO_ADVERTISE".to_owned(), "65535:65282".to_owned())]);
        assert_eq!(
            Community::resolve("NO_ADVERTISE", &aliases),
            Ok(Community::Standard(0xFFFF_FF02))
        );
        assert_eq!(
            Community::resolve("1:2", &aliases),
            Ok(Community::Standard(1 << 16 | 2))
        );
        let err = Community::resolve("missing", &aliases)
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("neither a community value nor a Community alias"),
            "{err}"
        );
    }
}
