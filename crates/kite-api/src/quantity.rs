//! Resource quantities (`500m`, `2`, `128Mi`, `1e3`) as integers: CPU in millicores and
//! everything else in units, the way the scheduler and kubelet compare them.

/// Parses a quantity into thousandths of its unit (so `500m` CPU is 500, `1Ki` is
/// 1,024,000). `None` for malformed input.
pub fn parse_milli(s: &str) -> Option<i128> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let (mant_str, exp10) = if let Some(e) = suffix.strip_prefix(['e', 'E']) {
        (num, e.parse::<i32>().ok()?)
    } else {
        (num, 0)
    };
    let mult_milli: i128 = match suffix {
        "" => 1000,
        "m" => 1,
        "k" => 1_000_000,
        "M" => 1_000_000_000,
        "G" => 1_000_000_000_000,
        "T" => 1_000_000_000_000_000,
        "P" => 1_000_000_000_000_000_000,
        "Ki" => 1024 * 1000,
        "Mi" => 1024 * 1024 * 1000,
        "Gi" => 1024 * 1024 * 1024 * 1000,
        "Ti" => 1024i128.pow(4) * 1000,
        "Pi" => 1024i128.pow(5) * 1000,
        _ if suffix.starts_with(['e', 'E']) => 1000,
        _ => return None,
    };
    let neg = mant_str.starts_with('-');
    let m = mant_str.trim_start_matches(['+', '-']);
    let (int, frac) = m.split_once('.').unwrap_or((m, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: i128 = format!("{int}{frac}").parse().ok()?;
    let scale = 10i128.checked_pow(frac.len() as u32)?;
    let mut v = digits.checked_mul(mult_milli)?;
    if exp10 >= 0 {
        v = v.checked_mul(10i128.checked_pow(exp10 as u32)?)?;
    } else {
        v /= 10i128.checked_pow((-exp10) as u32)?;
    }
    // Round up to the next milli-unit, as upstream does for CPU.
    let v = (v + scale - 1) / scale;
    Some(if neg { -v } else { v })
}

/// A quantity's text as JSON holds it: a string, or a number (`cpu: 1` in YAML).
pub fn text_of(v: &serde_json::Value) -> String {
    v.as_str()
        .map(String::from)
        .unwrap_or_else(|| v.to_string())
}

/// Parses a quantity in whole units (bytes, pods), rounding up.
pub fn parse(s: &str) -> Option<i128> {
    parse_milli(s).map(|m| (m + 999).div_euclid(1000))
}

/// A quantity as upstream writes it back (its canonical form, which error messages
/// show): `1000m` → `1`, `2000` → `2k`, `1024Mi` → `1Gi`, `0.5` → `500m`, `1e3` stays.
/// Binary suffixes stay binary when the value is a whole number of at least 1Ki.
/// What does not parse is given back as written.
pub fn canonical(s: &str) -> String {
    let Some(milli) = parse_milli(s) else {
        return s.trim().to_string();
    };
    let suffix = s
        .trim()
        .trim_start_matches(|c: char| c.is_ascii_digit() || "+-.".contains(c));
    if suffix.ends_with('i') && milli % 1000 == 0 && milli.abs() >= 1024 * 1000 {
        let mut units = milli / 1000;
        let mut k = 0;
        while k < 6 && units % 1024 == 0 {
            units /= 1024;
            k += 1;
        }
        return format!("{units}{}", ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][k]);
    }
    let (mut v, mut exp) = (milli, -3);
    while v != 0 && v % 1000 == 0 && exp < 18 {
        v /= 1000;
        exp += 3;
    }
    if v == 0 {
        return "0".into();
    }
    if suffix.starts_with(['e', 'E']) {
        return if exp == 0 {
            format!("{v}")
        } else {
            format!("{v}e{exp}")
        };
    }
    let si = match exp {
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        _ => "E",
    };
    format!("{v}{si}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms_match_upstream() {
        for (given, want) in [
            ("1000m", "1"),
            ("2", "2"),
            ("2000", "2k"),
            ("0.5", "500m"),
            ("1.5", "1500m"),
            ("1024Mi", "1Gi"),
            ("1536Mi", "1536Mi"),
            ("1.5Ki", "1536"),
            ("512Ki", "512Ki"),
            ("128M", "128M"),
            ("-1", "-1"),
            ("1e3", "1e3"),
            ("0", "0"),
            ("lots", "lots"),
        ] {
            assert_eq!(canonical(given), want, "{given}");
        }
    }

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_milli("500m"), Some(500));
        assert_eq!(parse_milli("2"), Some(2000));
        assert_eq!(parse_milli("0.5"), Some(500));
        assert_eq!(parse_milli("0.1"), Some(100));
        assert_eq!(parse("128Mi"), Some(128 * 1024 * 1024));
        assert_eq!(parse("1G"), Some(1_000_000_000));
        assert_eq!(parse("1e3"), Some(1000));
        assert_eq!(parse("110"), Some(110));
        assert_eq!(parse("abc"), None);
        assert_eq!(parse("1Zi"), None);
        assert_eq!(parse(""), None);
    }
}
