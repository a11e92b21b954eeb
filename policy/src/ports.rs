use std::fmt;

/// A set of TCP or UDP ports (1-65535) as a 8 KiB bitset: O(1) lookup, no size limit
/// (PortSentry stopped at 64 listed ports).
#[derive(Clone, PartialEq, Eq)]
pub struct PortSet {
    bits: Box<[u64; 1024]>,
    len: usize,
}

impl Default for PortSet {
    fn default() -> Self {
        Self {
            bits: Box::new([0; 1024]),
            len: 0,
        }
    }
}

impl fmt::Debug for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PortSet({})", self.to_list())
    }
}

impl PortSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, port: u16) {
        let (w, b) = (usize::from(port / 64), port % 64);
        if self.bits[w] & (1 << b) == 0 {
            self.bits[w] |= 1 << b;
            self.len += 1;
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.bits[usize::from(port / 64)] & (1 << (port % 64)) != 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (1..=u16::MAX).filter(|&p| self.contains(p))
    }

    /// Compact text form (`1,7,9-11`), for logs and `check-config`.
    pub fn to_list(&self) -> String {
        let mut items = Vec::new();
        let mut iter = self.iter().peekable();
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&end.wrapping_add(1)) && end != u16::MAX {
                end += 1;
                iter.next();
            }
            items.push(if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            });
        }
        items.join(",")
    }

    /// Parse `1,7,9-11` (spaces around items allowed). Every item must be a port in
    /// 1-65535 or an ascending range of them; an empty item is an error.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut set = Self::new();
        if s.trim().is_empty() {
            return Ok(set);
        }
        for item in s.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err("empty item in port list".into());
            }
            match item.split_once('-') {
                None => set.insert(parse_port(item)?),
                Some((a, b)) => {
                    let (a, b) = (parse_port(a.trim())?, parse_port(b.trim())?);
                    if a > b {
                        return Err(format!("reversed range {a}-{b}"));
                    }
                    for p in a..=b {
                        set.insert(p);
                    }
                }
            }
        }
        Ok(set)
    }
}

/// A port number 1-65535, decimal digits only: no sign, no wrap, no clamp.
pub(crate) fn parse_port(s: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{s}' is not a port number"));
    }
    match s.parse::<u16>() {
        Ok(n) if n != 0 => Ok(n),
        _ => Err(format!("port {s} out of range 1-65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_ranges() {
        let s = PortSet::parse("1, 7,9-11,65535").unwrap();
        assert_eq!(s.len(), 6);
        assert!(s.contains(10) && s.contains(65535) && !s.contains(8) && !s.contains(0));
        assert_eq!(s.to_list(), "1,7,9-11,65535");
    }

    #[test]
    fn rejects_bad_items() {
        assert_eq!(
            PortSet::parse("1,abc").unwrap_err(),
            "'abc' is not a port number"
        );
        assert_eq!(PortSet::parse("5-3").unwrap_err(), "reversed range 5-3");
        assert_eq!(
            PortSet::parse("0").unwrap_err(),
            "port 0 out of range 1-65535"
        );
        assert_eq!(
            PortSet::parse("65536").unwrap_err(),
            "port 65536 out of range 1-65535"
        );
        assert_eq!(
            PortSet::parse("4294967297").unwrap_err(),
            "port 4294967297 out of range 1-65535"
        );
        assert_eq!(
            PortSet::parse("1,,2").unwrap_err(),
            "empty item in port list"
        );
        assert_eq!(PortSet::parse("-1").unwrap_err(), "'' is not a port number");
        assert_eq!(
            PortSet::parse("+1").unwrap_err(),
            "'+1' is not a port number"
        );
    }

    #[test]
    fn more_than_64_ports() {
        let s = PortSet::parse("1-1000").unwrap();
        assert_eq!(s.len(), 1000);
        assert_eq!(s.iter().count(), 1000);
    }
}
