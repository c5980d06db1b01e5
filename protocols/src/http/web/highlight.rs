//! A small syntax highlighter for file previews: comments, strings,
//! numbers and keywords of common languages, chosen by file name. It only
//! wraps tokens in `<span class>`; everything is HTML-escaped first, so a
//! file's text can never become markup.

/// The comment and keyword rules of one family of languages.
pub(super) struct Language {
    line_comment: &'static [&'static str],
    block_comment: Option<(&'static str, &'static str)>,
    keywords: &'static [&'static str],
}

const C_LIKE: &[&str] = &[
    "as",
    "async",
    "await",
    "break",
    "case",
    "catch",
    "class",
    "const",
    "continue",
    "default",
    "do",
    "else",
    "enum",
    "export",
    "extends",
    "false",
    "final",
    "fn",
    "for",
    "func",
    "function",
    "go",
    "if",
    "impl",
    "import",
    "in",
    "interface",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "new",
    "null",
    "package",
    "private",
    "pub",
    "public",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "switch",
    "this",
    "throw",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "use",
    "var",
    "void",
    "where",
    "while",
    "yield",
    "int",
    "char",
    "unsigned",
    "long",
    "double",
    "float",
    "bool",
    "string",
    "nil",
    "none",
    "undefined",
];
const SCRIPT: &[&str] = &[
    "and", "as", "assert", "break", "case", "class", "continue", "def", "del", "do", "done", "elif", "else", "esac",
    "except", "export", "False", "fi", "finally", "for", "from", "function", "global", "if", "import", "in", "is",
    "lambda", "local", "None", "not", "or", "pass", "raise", "return", "then", "True", "true", "false", "try", "while",
    "with", "yield", "end", "module", "require", "unless", "until",
];
const SQL: &[&str] = &[
    "select", "from", "where", "insert", "into", "values", "update", "set", "delete", "create", "table", "index",
    "primary", "key", "not", "null", "and", "or", "join", "on", "order", "by", "group", "limit", "integer", "text",
    "blob", "exists", "if", "as", "left", "inner", "union", "begin", "commit",
];

const C: Language = Language {
    line_comment: &["//"],
    block_comment: Some(("/*", "*/")),
    keywords: C_LIKE,
};
const HASH: Language = Language {
    line_comment: &["#"],
    block_comment: None,
    keywords: SCRIPT,
};
const DATA: Language = Language {
    line_comment: &["#"],
    block_comment: None,
    keywords: &["true", "false", "null", "yes", "no"],
};
const SQL_LANG: Language = Language {
    line_comment: &["--"],
    block_comment: Some(("/*", "*/")),
    keywords: SQL,
};
const MARKUP: Language = Language {
    line_comment: &[],
    block_comment: Some(("<!--", "-->")),
    keywords: &[],
};

/// The language a file name suggests, if any.
pub(super) fn language(name: &str) -> Option<&'static Language> {
    let lower = name.to_ascii_lowercase();
    let file = lower.rsplit('/').next().unwrap_or(&lower);
    if matches!(
        file,
        "makefile" | "dockerfile" | "cmakelists.txt" | ".gitignore" | ".gitattributes"
    ) {
        return Some(&HASH);
    }
    let ext = file.rsplit_once('.')?.1;
    Some(match ext {
        "rs" | "c" | "h" | "cc" | "cpp" | "hpp" | "cxx" | "java" | "js" | "mjs" | "ts" | "tsx" | "jsx" | "go"
        | "kt" | "swift" | "cs" | "css" | "scss" | "json" | "proto" | "zig" | "dart" | "scala" => &C,
        "py" | "sh" | "bash" | "zsh" | "rb" | "pl" | "r" | "jl" | "nix" | "mk" | "cmake" => &HASH,
        "toml" | "yaml" | "yml" | "ini" | "cfg" | "conf" | "env" | "properties" => &DATA,
        "sql" => &SQL_LANG,
        "html" | "htm" | "xml" | "svg" | "vue" => &MARKUP,
        _ => return None,
    })
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

fn span(out: &mut String, class: &str, text: &str) {
    out.push_str("<span class=\"");
    out.push_str(class);
    out.push_str("\">");
    escape_into(out, text);
    out.push_str("</span>");
}

/// `text` as escaped HTML, its tokens wrapped by the rules `name` suggests
/// (escaped only, for names with no rules).
pub(super) fn highlight(name: &str, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let Some(lang) = language(name) else {
        escape_into(&mut out, text);
        return out;
    };
    let mut rest = text;
    while !rest.is_empty() {
        if lang.line_comment.iter().any(|p| rest.starts_with(p)) {
            let end = rest.find('\n').unwrap_or(rest.len());
            span(&mut out, "c", &rest[..end]);
            rest = &rest[end..];
            continue;
        }
        if let Some((open, close)) = lang.block_comment
            && rest.starts_with(open)
        {
            let end = rest[open.len()..]
                .find(close)
                .map_or(rest.len(), |i| open.len() + i + close.len());
            span(&mut out, "c", &rest[..end]);
            rest = &rest[end..];
            continue;
        }
        let first = rest.chars().next().unwrap_or(' ');
        if first == '"' || (first == '\'' && !lang.keywords.is_empty()) || first == '`' {
            let end = string_end(rest, first);
            span(&mut out, "s", &rest[..end]);
            rest = &rest[end..];
            continue;
        }
        if first.is_ascii_digit() {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
                .unwrap_or(rest.len());
            span(&mut out, "n", &rest[..end]);
            rest = &rest[end..];
            continue;
        }
        if first.is_alphabetic() || first == '_' {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let word = &rest[..end];
            let keyword = if std::ptr::eq(lang, &SQL_LANG) {
                lang.keywords.iter().any(|k| k.eq_ignore_ascii_case(word))
            } else {
                lang.keywords.contains(&word)
            };
            if keyword {
                span(&mut out, "k", word);
            } else {
                escape_into(&mut out, word);
            }
            rest = &rest[end..];
            continue;
        }
        let len = first.len_utf8();
        escape_into(&mut out, &rest[..len]);
        rest = &rest[len..];
    }
    out
}

/// Where a string that opens with `quote` at the start of `text` ends
/// (after its closing quote; at the line's end if unclosed, backticks
/// excepted).
fn string_end(text: &str, quote: char) -> usize {
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == quote {
            return i + c.len_utf8();
        } else if c == '\n' && quote != '`' {
            return i;
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::highlight;

    #[test]
    fn markup_in_a_file_stays_text() {
        let html = highlight("x.rs", "let s = \"<script>alert(1)</script>\"; // <b>\nfn f() {}");
        assert!(!html.contains("<script>") && !html.contains("<b>"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("<span class=\"k\">let</span>"));
        assert!(html.contains("<span class=\"c\">// &lt;b&gt;</span>"));
        assert_eq!(highlight("notes", "<i>&"), "&lt;i&gt;&amp;");
    }
}
