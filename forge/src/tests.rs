//! Unit tests of the forge's parsers; the protocol itself is tested end to
//! end with stock git (tests/e2e/git.rs).

use crate::repo_name;
use crate::walk::Filter;

#[test]
fn repository_names_from_git_paths() {
    for path in ["hello", "/hello", "/hello.git", "~/hello.git", "hello/"] {
        assert_eq!(repo_name(path).expect(path), "hello");
    }
    for bad in ["", "/", "Hello", "a/b", "../x", ".git"] {
        assert!(repo_name(bad).is_err(), "{bad:?} is not a repository name");
    }
}

#[test]
fn filters_parse() {
    assert_eq!(Filter::parse("blob:none").expect("blob:none"), Filter::NoBlobs);
    assert_eq!(Filter::parse("blob:limit=1k").expect("1k"), Filter::BlobLimit(1024));
    assert_eq!(Filter::parse("blob:limit=3").expect("3"), Filter::BlobLimit(3));
    assert_eq!(Filter::parse("blob:limit=2M").expect("2M"), Filter::BlobLimit(2 << 20));
    assert_eq!(Filter::parse("tree:0").expect("tree:0"), Filter::TreeDepth(0));
    for bad in [
        "sparse:oid=abc",
        "blob:limit=",
        "blob:limit=1q",
        "tree:x",
        "combine:a+b",
    ] {
        let e = Filter::parse(bad).expect_err(bad).to_string();
        assert!(e.contains("not supported"), "{bad}: {e}");
    }
}

#[test]
fn ref_names_are_checked() {
    use crate::receive::valid_ref_name;
    for good in ["refs/heads/main", "refs/tags/v1.0", "refs/heads/feature/x-y_z"] {
        assert!(valid_ref_name(good), "{good}");
    }
    for bad in [
        "main",
        "refs/heads/",
        "refs/heads/a..b",
        "refs/heads/a b",
        "refs/heads/x.lock",
        "refs/heads/a~1",
        "refs/heads/a:b",
        "refs//x",
        "refs/heads/@{x}",
    ] {
        assert!(!valid_ref_name(bad), "{bad}");
    }
}
