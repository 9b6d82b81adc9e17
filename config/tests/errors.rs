//! One test per class of error: each asserts the key path and the line (and so the place a user
//! is sent to), and that the message says what is allowed.

use ebbtide_config::{Config, ConfigError, PolicyKind};

fn errors(text: &str) -> Vec<ConfigError> {
    match Config::from_toml(text, "t.toml") {
        Ok(cfg) => panic!("expected errors, got {cfg:?}"),
        Err(e) => e.0,
    }
}

/// Asserts `text` has exactly one error, at `key` on `line`, saying `needle`; returns it.
#[track_caller]
fn one(text: &str, key: &str, line: usize, needle: &str) -> ConfigError {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let e = errs.into_iter().next().unwrap();
    assert_eq!((e.key.as_str(), e.line), (key, line), "{e}");
    assert!(e.message.contains(needle), "`{needle}` not in: {e}");
    let shown = e.to_string();
    let prefix = format!("t.toml:{line}:{}: {key}: ", e.col);
    assert!(shown.starts_with(&prefix), "{shown}");
    assert!(!shown.contains('\n'), "{shown}");
    e
}

#[track_caller]
fn ok(text: &str) -> Config {
    Config::from_toml(text, "t.toml").unwrap_or_else(|e| panic!("{e}"))
}

// ---- serde and syntax errors

#[test]
fn syntax_error_names_the_key_and_line() {
    let e = one(
        "[listener]\naddress = \"127.0.0.1:8080\n",
        "listener.address",
        2,
        "invalid TOML: ",
    );
    assert!(e.col > 1);
    one(
        "[admin]\n\n[listener\n",
        "listener",
        3,
        "invalid TOML: invalid table header",
    );
    one(
        "[[backends]]\naddress = \"a:1\"\n[[backends]]\nweight = = 2\n",
        "backends[1].weight",
        4,
        "",
    );
}

#[test]
fn duplicate_table_is_reported_where_it_repeats() {
    one(
        "[listener]\naddress = \"127.0.0.1:1\"\n[listener]\n",
        "listener",
        3,
        "duplicate key",
    );
}

#[test]
fn unknown_key_lists_the_allowed_keys() {
    let e = one(
        "[listener]\naddress = \"127.0.0.1:8080\"\nadress = \"x\"\n",
        "listener.adress",
        3,
        "unknown key `adress`",
    );
    assert!(
        e.message
            .contains("`address`, `header_read_timeout`, `request_buffer`"),
        "{e}"
    );
    assert_eq!(e.col, 1);
    one("\n[foo]\nx = 1\n", "foo", 2, "`listener`, `admin`");
    one(
        "[[backends]]\naddress = \"a:1\"\n[[backends]]\naddress = \"b:1\"\nweigth = 2\n",
        "backends[1].weigth",
        5,
        "`weight`",
    );
    one(
        "backends = [\n  { address = \"a:1\" },\n  { address = \"b:1\", cost = 1 },\n]\n",
        "backends[1].cost",
        3,
        "`cost_per_hour`",
    );
}

#[test]
fn wrong_type_names_the_key_and_the_type_wanted() {
    let e = one(
        "[balancer]\nchoices = \"two\"\n",
        "balancer.choices",
        2,
        "expected a non-negative integer",
    );
    assert_eq!(e.col, 11);
    assert!(!e.message.contains("invalid TOML"), "{e}");
    one(
        "[provider]\ncount = 1\ncommand = [\"a\", 5]\n",
        "provider.command[1]",
        3,
        "expected a string",
    );
    one("\nlistener = 5\n", "listener", 2, "expected a table");
    one("[backends]\n", "backends", 1, "expected an array");
    one(
        "[[backends]]\naddress = \"a:1\"\ncapacity = -3\n",
        "backends[0].capacity",
        3,
        "from 0 to 4294967295",
    );
    one(
        "[balancer]\nutilisation_target = \"high\"\n",
        "balancer.utilisation_target",
        2,
        "expected a number",
    );
}

#[test]
fn bad_duration_names_the_key_and_the_units() {
    let e = one(
        "[signals]\n\nwindow = \"10 parsecs\"\n",
        "signals.window",
        3,
        "unknown unit",
    );
    assert!(e.message.contains("ns, us, ms, s, m or h"), "{e}");
    one(
        "[upstream]\nconnect_timeout = 5\n",
        "upstream.connect_timeout",
        2,
        "duration string such as \"250ms\"",
    );
    one(
        "[listener]\nheader_read_timeout = \"10\"\n",
        "listener.header_read_timeout",
        2,
        "no unit",
    );
}

#[test]
fn unknown_policy_lists_every_policy() {
    let e = one(
        "[listener]\naddress = \"127.0.0.1:8080\"\n[balancer]\npolicy = \"p3c\"\n",
        "balancer.policy",
        4,
        "unknown value `p3c`",
    );
    for p in PolicyKind::ALL {
        assert!(e.message.contains(&format!("`{}`", p.name())), "{e}");
    }
    one(
        "[provider]\nkind = \"nomad\"\n",
        "provider.kind",
        2,
        "`local`",
    );
}

#[test]
fn missing_required_key_points_at_its_table() {
    one(
        "[[backends]]\naddress = \"a:1\"\n\n[[backends]]\ncapacity = 3\n",
        "backends[1]",
        4,
        "missing required key `address`",
    );
}

// ---- semantic errors

#[test]
fn listener_address_must_be_ip_port() {
    let e = one(
        "[listener]\nheader_read_timeout = \"5s\"\naddress = \"localhost:8080\"\n",
        "listener.address",
        3,
        "not an ip:port",
    );
    assert_eq!(e.col, 11);
    one(
        "[listener]\naddress = \"127.0.0.1\"\n",
        "listener.address",
        2,
        "\"127.0.0.1:8080\"",
    );
}

#[test]
fn admin_address_must_be_ip_port() {
    one(
        "[admin]\naddress = \"127.0.0.1:99999\"\n",
        "admin.address",
        2,
        "not an ip:port",
    );
}

#[test]
fn listener_and_admin_must_differ() {
    one(
        "[listener]\naddress = \"127.0.0.1:8080\"\n[admin]\naddress = \"127.0.0.1:8080\"\n",
        "admin.address",
        4,
        "clashes with listener.address",
    );
    // A wildcard clashes with any address on its port; a token keeps the token check quiet.
    one(
        "[listener]\naddress = \"0.0.0.0:7000\"\n[admin]\naddress = \"127.0.0.1:7000\"\n",
        "admin.address",
        4,
        "clashes",
    );
    // Port 0 is "any free port": never a clash.
    ok("[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n");
    ok("[listener]\naddress = \"127.0.0.1:8080\"\n[admin]\naddress = \"127.0.0.2:8080\"\n");
}

#[test]
fn tls_keys_are_checked_where_they_are_written() {
    one(
        "[listener]\naddress = \"127.0.0.1:8443\"\n[[listener.tls]]\ncert = \"\"\nkey = \"k.pem\"\n",
        "listener.tls[0].cert",
        4,
        "give the PEM file of the certificate chain",
    );
    one(
        "[listener]\naddress = \"127.0.0.1:8443\"\n[[listener.tls]]\ncert = \"c.pem\"\n",
        "listener.tls[0]",
        3,
        "missing required key `key`",
    );
    one(
        "[listener]\naddress = \"127.0.0.1:8443\"\n[[listener.tls]]\ncert = \"c.pem\"\nkey = \"k.pem\"\nkeyfile = \"x\"\n",
        "listener.tls[0].keyfile",
        6,
        "unknown key",
    );
    one(
        "[listener]\naddress = \"127.0.0.1:8080\"\nclient_ca = \"ca.pem\"\n",
        "listener.client_ca",
        3,
        "needs TLS on the listener",
    );
    one(
        "[listener]\nclient_auth = \"optional\"\n[[listener.tls]]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
        "listener.client_auth",
        2,
        "needs listener.client_ca",
    );
    one(
        "[listener]\nclient_ca = \"ca.pem\"\nclient_auth = \"sometimes\"\n",
        "listener.client_auth",
        3,
        "expected `required` or `optional`",
    );
    one(
        "[listener]\nhttp1 = \"fast\"\n",
        "listener.http1",
        2,
        "expected `hyper` or `native`",
    );
    assert_eq!(
        ok("[listener]\nhttp1 = \"hyper\"\n").listener.http1,
        ebbtide_config::Http1Engine::Hyper
    );
    assert_eq!(
        ok("[listener]\n").listener.http1,
        ebbtide_config::Http1Engine::Native
    );
    one(
        "[listener]\nredirect_address = \"127.0.0.1:8081\"\n",
        "listener.redirect_address",
        2,
        "needs TLS on the listener",
    );
    one(
        "[listener]\naddress = \"127.0.0.1:8443\"\nredirect_address = \"127.0.0.1:8443\"\n\
         [[listener.tls]]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
        "listener.redirect_address",
        3,
        "clashes with listener.address",
    );
    let cfg = ok(
        "[listener]\naddress = \"127.0.0.1:8443\"\nredirect_address = \"127.0.0.1:8080\"\n\
         client_ca = \"ca.pem\"\nclient_auth = \"optional\"\n\
         [[listener.tls]]\ncert = \"a.pem\"\nkey = \"a.key\"\n\
         [[listener.tls]]\ncert = \"/etc/b.pem\"\nkey = \"b.key\"\n",
    );
    assert_eq!(cfg.listener.tls.len(), 2);
    assert_eq!(cfg.listener.tls[1].cert, "/etc/b.pem");
    assert_eq!(
        cfg.listener.client_auth,
        Some(ebbtide_config::ClientAuth::Optional)
    );
}

#[test]
fn tls_paths_are_relative_to_the_config_file() {
    let dir = std::env::temp_dir().join(format!("ebbtide-tls-paths-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tls.toml");
    std::fs::write(
        &file,
        "[listener]\nclient_ca = \"ca.pem\"\n[[listener.tls]]\ncert = \"certs/a.pem\"\nkey = \"/abs/a.key\"\n",
    )
    .unwrap();
    let cfg = Config::from_file(&file);
    let _ = std::fs::remove_dir_all(&dir);
    let l = cfg.unwrap().listener;
    assert_eq!(l.tls[0].cert, dir.join("certs/a.pem").display().to_string());
    assert_eq!(l.tls[0].key, "/abs/a.key");
    assert_eq!(l.client_ca, Some(dir.join("ca.pem").display().to_string()));
}

#[test]
fn admin_token_is_required_off_loopback() {
    // Not written: points at the [admin] header.
    one(
        "[listener]\naddress = \"127.0.0.1:8080\"\n\n[admin]\naddress = \"0.0.0.0:9901\"\n",
        "admin.token",
        4,
        "required because admin.address `0.0.0.0:9901` is not loopback",
    );
    one(
        "[admin]\naddress = \"[::]:9901\"\n",
        "admin.token",
        1,
        "not loopback",
    );
    ok("[admin]\naddress = \"0.0.0.0:9901\"\ntoken = \"s3cret\"\n");
    ok("[admin]\naddress = \"127.5.6.7:9901\"\n");
    ok("[admin]\naddress = \"[::1]:9901\"\n");
    ok("[admin]\naddress = \"[::ffff:127.0.0.1]:9901\"\n");
}

#[test]
fn admin_token_must_not_be_empty() {
    one(
        "[admin]\naddress = \"127.0.0.1:9901\"\ntoken = \"  \"\n",
        "admin.token",
        3,
        "is empty",
    );
}

#[test]
fn backend_address_must_be_host_port() {
    let cases = [
        ("127.0.0.1", "no port"),
        ("127.0.0.1:0", "port 0"),
        ("127.0.0.1:70000", "from 1 to 65535"),
        ("http://127.0.0.1:80", "scheme"),
        ("bad_host:80", "neither an IP address nor a hostname"),
    ];
    for (addr, why) in cases {
        let text = format!(
            "[[backends]]\naddress = \"127.0.0.1:1\"\n[[backends]]\naddress = \"{addr}\"\n"
        );
        one(&text, "backends[1].address", 4, why);
    }
    ok("[[backends]]\naddress = \"backend-1.default.svc:8080\"\n\
        [[backends]]\naddress = \"[::1]:8080\"\n");
}

#[test]
fn duplicate_backend_addresses_name_both_entries() {
    let e = one(
        "[[backends]]\naddress = \"127.0.0.1:9001\"\n[[backends]]\naddress = \"127.0.0.1:9002\"\n\
         [[backends]]\naddress = \"127.0.0.1:9001\"\n",
        "backends[2].address",
        6,
        "backends[0].address",
    );
    assert!(e.message.contains("127.0.0.1:9001"), "{e}");
    // Hostnames compare without case; inline tables are located too.
    one(
        "backends = [\n  { address = \"Web:80\" },\n  { address = \"web:80\" },\n]\n",
        "backends[1].address",
        3,
        "backends[0]",
    );
}

#[test]
fn backend_capacity_zero_is_rejected() {
    one(
        "[[backends]]\naddress = \"a:1\"\ncapacity = 0\n",
        "backends[0].capacity",
        3,
        "at least 1",
    );
}

#[test]
fn backend_weight_must_be_at_least_one() {
    one(
        "[[backends]]\naddress = \"a:1\"\nweight = 0\n",
        "backends[0].weight",
        3,
        "at least 1",
    );
}

#[test]
fn costs_must_be_finite_and_not_negative() {
    for bad in ["-0.5", "nan", "inf"] {
        let text = format!("[[backends]]\naddress = \"a:1\"\ncost_per_hour = {bad}\n");
        one(&text, "backends[0].cost_per_hour", 3, "finite number >= 0");
        let text = format!("[provider]\ncapacity = 1\ncost_per_hour = {bad}\n");
        one(&text, "provider.cost_per_hour", 3, "finite number >= 0");
    }
    ok("[[backends]]\naddress = \"a:1\"\ncost_per_hour = 0.0\n");
}

#[test]
fn balancer_choices_from_2_to_16() {
    for bad in [0, 1, 17] {
        one(
            &format!("[balancer]\npolicy = \"p2c\"\nchoices = {bad}\n"),
            "balancer.choices",
            3,
            "from 2 to 16",
        );
    }
    ok("[balancer]\nchoices = 16\n");
}

#[test]
fn balancer_hash_key_must_parse() {
    one(
        "[balancer]\npolicy = \"consistent_hash\"\nhash_key = \"header:\"\n",
        "balancer.hash_key",
        3,
        "\"header:NAME\"",
    );
    one(
        "[balancer]\nhash_key = \"query\"\n",
        "balancer.hash_key",
        2,
        "\"cookie:NAME\"",
    );
    // Parsed once, into its type: what the proxy uses is what the file says.
    let cfg = ok("[balancer]\npolicy = \"consistent_hash\"\nhash_key = \"header:X-User\"\n");
    assert_eq!(
        cfg.balancer.hash_key,
        ebbtide_config::HashKey::Header("x-user".into())
    );
    assert!(cfg.summary().contains("consistent_hash on header:x-user"));
}

#[test]
fn balancer_utilisation_target_in_0_to_1() {
    for bad in ["0.0", "1.5", "-0.1", "nan"] {
        one(
            &format!("[balancer]\nutilisation_target = {bad}\n"),
            "balancer.utilisation_target",
            2,
            "greater than 0 and at most 1",
        );
    }
    ok("[balancer]\nutilisation_target = 1.0\n");
}

#[test]
fn timeouts_must_be_positive() {
    let keys = [
        ("listener", "header_read_timeout"),
        ("upstream", "connect_timeout"),
        ("upstream", "response_timeout"),
        ("upstream", "idle_timeout"),
        ("upstream", "tunnel_idle_timeout"),
        ("balancer", "ewma_decay"),
    ];
    for (section, key) in keys {
        one(
            &format!("[{section}]\n{key} = \"0ms\"\n"),
            &format!("{section}.{key}"),
            2,
            "greater than zero",
        );
    }
}

#[test]
fn overload_queue_timeout_must_be_positive() {
    one(
        "[overload]\nmax_queue = 10\nqueue_timeout = \"0\"\n",
        "overload.queue_timeout",
        3,
        "greater than zero",
    );
}

#[test]
fn signals_window_from_1s_to_1h() {
    for bad in ["500ms", "61m"] {
        one(
            &format!("[signals]\nwindow = \"{bad}\"\n"),
            "signals.window",
            2,
            "from 1s to 1h",
        );
    }
    ok("[signals]\nwindow = \"1s\"\n");
    ok("[signals]\nwindow = \"1h\"\n");
}

#[test]
fn runtime_worker_threads_at_least_one() {
    one(
        "[runtime]\nworker_threads = 0\n",
        "runtime.worker_threads",
        2,
        "at least 1",
    );
    assert_eq!(
        ok("[runtime]\nworker_threads = 1\n").runtime.worker_threads,
        Some(1)
    );
}

#[test]
fn provider_command_needs_words_and_a_port() {
    one(
        "[provider]\ncapacity = 1\ncommand = []\n",
        "provider.command",
        3,
        "is empty",
    );
    one(
        "[provider]\ncommand = [\"\", \"{port}\"]\n",
        "provider.command",
        2,
        "first word",
    );
    one(
        "[provider]\ncommand = [\"ebbtide\", \"backend\", \"--listen\", \"127.0.0.1:8000\"]\n",
        "provider.command",
        2,
        "{port}",
    );
    ok("[provider]\ncommand = [\"my-server\", \"--port={port}\"]\n");
}

#[test]
fn docker_provider_needs_an_image_and_a_port() {
    let errs = errors("[provider]\nkind = \"docker\"\ncapacity = 2\n");
    let keys: Vec<_> = errs.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        keys,
        [("provider.image", 1), ("provider.port", 1)],
        "{errs:#?}"
    );
    assert!(errs[0].message.contains("nothing is pulled"), "{}", errs[0]);
    let cfg = ok("[provider]\nkind = \"docker\"\nimage = \"b:dev\"\nport = 8080\n");
    let p = cfg.provider.unwrap();
    assert!(
        p.container_command().is_empty(),
        "left out: the image's CMD"
    );
    assert_eq!(p.owner.as_deref(), Some("admin-127.0.0.1:9901"));
}

#[test]
fn docker_provider_limits_are_checked_where_written() {
    let head = "[provider]\nkind = \"docker\"\nimage = \"b:dev\"\nport = 8080\n";
    one(
        &format!("{head}cpus = 0\n"),
        "provider.cpus",
        5,
        "at least 0.01",
    );
    one(
        &format!("{head}memory = \"1MiB\"\n"),
        "provider.memory",
        5,
        "smallest memory limit is 6MiB",
    );
    one(
        &format!("{head}memory = \"64 parsecs\"\n"),
        "provider.memory",
        5,
        "unknown unit",
    );
    one(
        "[provider]\nkind = \"docker\"\nimage = \"b:dev\"\nport = 70000\n",
        "provider.port",
        4,
        "from 0 to 65535",
    );
    one(
        &format!("{head}network = \"host\"\n"),
        "provider.network",
        5,
        "user-defined network",
    );
    one(
        &format!("{head}env = [\"RUST_LOG\"]\n"),
        "provider.env",
        5,
        "not NAME=value",
    );
    one(
        &format!("{head}labels = {{ \"ebbtide.owner\" = \"x\" }}\n"),
        "provider.labels",
        5,
        "ebbtide sets itself",
    );
    one(
        &format!("{head}launch = [\"a.sh\"]\n"),
        "provider.launch",
        5,
        "only used with provider.kind = \"command\"",
    );
    let cfg = ok(&format!(
        "{head}cpus = 0.5\nmemory = \"64MiB\"\nenv = [\"A=1\"]\nowner = \"web\"\n\
         command = [\"backend\", \"--listen\", \"0.0.0.0:{{port}}\"]\n"
    ));
    let p = cfg.provider.unwrap();
    assert_eq!(p.memory.unwrap().0, 64 << 20);
    assert_eq!(p.owner.as_deref(), Some("web"));
    assert_eq!(p.container_command().len(), 3);
}

#[test]
fn docker_provider_needs_an_owner_when_the_admin_port_is_0() {
    let text = "[admin]\naddress = \"127.0.0.1:0\"\n[provider]\nkind = \"docker\"\n\
                image = \"b:dev\"\nport = 8080\n";
    one(text, "provider.owner", 3, "admin.address has port 0");
    let cfg = ok(&format!("{text}owner = \"t1\"\n"));
    assert_eq!(cfg.provider.unwrap().owner.as_deref(), Some("t1"));
}

#[test]
fn docker_keys_belong_to_the_docker_provider() {
    one(
        "[provider]\ncommand = [\"s\", \"{port}\"]\nimage = \"b:dev\"\n",
        "provider.image",
        3,
        "only used with provider.kind = \"docker\"; this provider is \"local\"",
    );
}

#[test]
fn provider_count_at_most_1000() {
    one(
        "[provider]\ncount = 1001\n",
        "provider.count",
        2,
        "from 0 to 1000",
    );
    ok("[provider]\ncount = 1000\n");
    ok("[provider]\ncount = 0\n");
}

#[test]
fn provider_capacity_zero_is_rejected() {
    one(
        "[provider]\ncount = 1\ncapacity = 0\n",
        "provider.capacity",
        3,
        "at least 1",
    );
}

#[test]
fn provider_boot_timeout_must_be_positive() {
    one(
        "[provider]\nboot_timeout = \"0s\"\n",
        "provider.boot_timeout",
        2,
        "greater than zero",
    );
}

#[test]
fn central_queue_needs_every_capacity_without_the_adaptive_limit() {
    let text = "[balancer]\npolicy = \"central_queue\"\n\n\
                [[backends]]\naddress = \"a:1\"\ncapacity = 4\n\n\
                [[backends]]\naddress = \"b:1\"\n\n\
                [provider]\ncount = 2\n";
    // Issue 14, "Defaults that fight the user": the adaptive limit (on by default) supplies
    // the slots of a backend without a capacity.
    ok(text);
    let text = format!("{text}[overload]\nadaptive_limit = false\n");
    let errs = errors(&text);
    let got: Vec<_> = errs.iter().map(|e| (e.key.as_str(), e.line)).collect();
    // Neither key is written: each points at its table's header.
    assert_eq!(
        got,
        [("backends[1].capacity", 8), ("provider.capacity", 11)]
    );
    for e in &errs {
        assert!(e.message.contains("central_queue"), "{e}");
        assert!(e.message.contains("capacity = "), "{e}");
        assert!(e.message.contains("adaptive_limit"), "{e}");
    }
    // Other policies do not need capacities.
    ok("[[backends]]\naddress = \"b:1\"\n[provider]\ncount = 2\n");
}

// ---- many errors, and where they point

#[test]
fn every_semantic_error_is_reported_in_file_order() {
    let text = "\
[listener]
address = \"nowhere\"

[balancer]
choices = 1
utilisation_target = 1.5

[[backends]]
address = \"a:1\"
weight = 0

[[backends]]
address = \"a:1\"
capacity = 0

[provider]
command = [\"server\"]
count = 5000
";
    let errs = errors(text);
    let got: Vec<_> = errs.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        got,
        [
            ("listener.address", 2),
            ("balancer.choices", 5),
            ("balancer.utilisation_target", 6),
            ("backends[0].weight", 10),
            ("backends[1].address", 13),
            ("backends[1].capacity", 14),
            ("provider.command", 17),
            ("provider.count", 18),
        ]
    );
    let shown = Config::from_toml(text, "t.toml").unwrap_err().to_string();
    assert_eq!(shown.lines().count(), errs.len());
    assert!(shown
        .lines()
        .all(|l| l.starts_with("t.toml:") && l.split(": ").count() >= 3));
}

#[test]
fn dotted_keys_are_located() {
    let e = one(
        "# a comment\nbalancer.choices = 40\n",
        "balancer.choices",
        2,
        "from 2 to 16",
    );
    assert_eq!(e.col, 20);
}

#[test]
fn unreadable_file_says_so() {
    let err = Config::from_file(std::path::Path::new("/nonexistent/ebbtide.toml")).unwrap_err();
    assert!(err.to_string().starts_with("/nonexistent/ebbtide.toml:"));
    assert!(err.to_string().contains("cannot read"));
}

#[test]
fn command_provider_needs_its_scripts() {
    let errs = errors("[provider]\nkind = \"command\"\nterminate = [\"./stop.sh\", \"{id}\"]\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].to_string().contains("provider.launch"), "{errs:?}");
    assert!(
        errs[0]
            .to_string()
            .contains("is required because provider.kind is \"command\""),
        "{errs:?}"
    );
}

#[test]
fn local_provider_refuses_scripts_it_would_ignore() {
    one(
        "[provider]\nkind = \"local\"\nlaunch = [\"./start.sh\"]\n",
        "provider.launch",
        3,
        "only used with provider.kind = \"command\"",
    );
}

#[test]
fn balancer_urls_must_be_plain_admin_urls() {
    let text = "[provider]\n[autoscaler]\nbalancers = [\"http://127.0.0.1:9901\", \"127.0.0.1:9902\", \"http://h:1/x\"]\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].to_string().contains("autoscaler.balancers[1]")
            && errs[0].to_string().contains("http://"),
        "{errs:?}"
    );
    assert!(
        errs[1].to_string().contains("autoscaler.balancers[2]")
            && errs[1].to_string().contains("nothing after"),
        "{errs:?}"
    );
}

#[test]
fn balancer_discovery_keys_name_their_key_and_line() {
    let cfg = ok(
        "[provider]\n[autoscaler]\n[autoscaler.balancer_discovery]\nkind = \"kubernetes\"\n\
                  namespace = \"ebbtide\"\nservice = \"ebbtide-admin\"\nport = \"admin\"\n",
    );
    let d = cfg.autoscaler.unwrap().balancer_discovery.unwrap();
    assert_eq!(d.service.as_deref(), Some("ebbtide-admin"));
    assert_eq!(d.port, Some(ebbtide_config::PortRef::Name("admin".into())));
    let by_number =
        ok("[provider]\n[autoscaler.balancer_discovery]\nservice = \"a\"\nport = 9901\n");
    assert_eq!(
        by_number
            .autoscaler
            .unwrap()
            .balancer_discovery
            .unwrap()
            .port,
        Some(ebbtide_config::PortRef::Number(9901))
    );
    one(
        "[provider]\n[autoscaler]\n[autoscaler.balancer_discovery]\nport = \"admin\"\n",
        "autoscaler.balancer_discovery.service",
        3,
        "is required; give the balancers' Service",
    );
    one(
        "[provider]\n[autoscaler]\n[autoscaler.balancer_discovery]\nservice = \"Admin_1\"\n",
        "autoscaler.balancer_discovery.service",
        4,
        "is not a Service name",
    );
    one(
        "[provider]\n[autoscaler.balancer_discovery]\nservice = \"a\"\nport = 0\n",
        "autoscaler.balancer_discovery.port",
        4,
        "is 0",
    );
    one(
        "[provider]\n[autoscaler.balancer_discovery]\nservice = \"a\"\nnamespace = \"-x\"\n",
        "autoscaler.balancer_discovery.namespace",
        4,
        "is not a namespace name",
    );
    one(
        "[provider]\n[autoscaler.balancer_discovery]\nservice = \"a\"\nservce = \"b\"\n",
        "autoscaler.balancer_discovery.servce",
        4,
        "service",
    );
    // Both the static list and the Service: which would be the balancers?
    one(
        "[provider]\n[autoscaler]\nbalancers = [\"http://127.0.0.1:9901\"]\n\
         [autoscaler.balancer_discovery]\nservice = \"a\"\n",
        "autoscaler.balancer_discovery",
        4,
        "keep one",
    );
}

#[test]
fn registration_lease_must_outlast_the_interval() {
    one(
        "[provider]\n[autoscaler]\ninterval = \"5s\"\nregistration_lease = \"5s\"\n",
        "autoscaler.registration_lease",
        4,
        "must outlast one",
    );
}

#[test]
fn listener_limits_are_checked_with_key_and_line() {
    one(
        "[listener]\naddress = \"127.0.0.1:1\"\nmax_header_bytes = 100\n",
        "listener.max_header_bytes",
        3,
        "must be from 8192",
    );
    one(
        "[listener]\nbody_read_timeout = \"0s\"\n",
        "listener.body_read_timeout",
        2,
        "",
    );
    one(
        "[listener]\n\nmax_uri_bytes = 10\n",
        "listener.max_uri_bytes",
        3,
        "must be from 64",
    );
    one(
        "[listener]\nmax_headers = 0\n",
        "listener.max_headers",
        2,
        "must be from 1",
    );
    one(
        "[listener]\nmax_streams_per_connection = 0\n",
        "listener.max_streams_per_connection",
        2,
        "at least 1",
    );
}

#[test]
fn log_section_errors_name_the_key() {
    one(
        "[log]\naccess = \"apache\"\n",
        "log.access",
        2,
        "unknown value `apache`",
    );
    one(
        "[log]\naccess_buffer = 0\n",
        "log.access_buffer",
        2,
        "at least 1",
    );
    one("[log]\naccess_path = \"\"\n", "log.access_path", 2, "empty");
    let c = ok("[log]\naccess = \"json\"\naccess_path = \"/tmp/a.log\"\nrequest_id = false\n");
    assert_eq!(c.log.access, ebbtide_config::AccessLogFormat::Json);
    assert!(!c.log.request_id);
    assert_eq!(ok("").log.access, ebbtide_config::AccessLogFormat::Off);
}

#[test]
fn upstream_protocol_and_tls_keys_name_their_key_and_line() {
    one(
        "[[backends]]\naddress = \"127.0.0.1:1\"\nprotocol = \"http3\"\n",
        "backends[0].protocol",
        3,
        "`h2c`",
    );
    one(
        "[[backends]]\naddress = \"127.0.0.1:1\"\nprotocol = \"h2c\"\nserver_name = \"a\"\n",
        "backends[0].server_name",
        4,
        "TLS backends only",
    );
    one(
        "[[backends]]\naddress = \"127.0.0.1:1\"\nprotocol = \"h2\"\n\
         tls_ca = \"/nonexistent/ca.pem\"\n",
        "backends[0].tls_ca",
        4,
        "cannot read `/nonexistent/ca.pem`",
    );
    one(
        "[[backends]]\naddress = \"127.0.0.1:1\"\nprotocol = \"https\"\n\
         server_name = \"not a name\"\n",
        "backends[0].server_name",
        4,
        "neither a DNS name nor an IP address",
    );
    one(
        "[upstream]\nca = \"/nonexistent/ca.pem\"\n",
        "upstream.ca",
        2,
        "cannot read",
    );
    one(
        "[upstream]\nmax_streams_per_connection = 0\n",
        "upstream.max_streams_per_connection",
        2,
        "at least 1",
    );
    one(
        "[provider]\nprotocol = \"h3\"\n",
        "provider.protocol",
        2,
        "`https`",
    );
    let cfg = ok(
        "[[backends]]\naddress = \"127.0.0.1:1\"\nprotocol = \"h2c\"\n\
                  [provider]\nprotocol = \"h2c\"\n",
    );
    assert_eq!(cfg.backends[0].protocol, ebbtide_config::Protocol::H2c);
    assert_eq!(
        cfg.provider.unwrap().protocol,
        ebbtide_config::Protocol::H2c
    );
}
