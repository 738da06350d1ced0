//! A real nginx of the test's own, on a free port, running one of the shipped snippets in
//! `conf/` with its addresses replaced by the test's.

use super::{eventually, free_port};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Runs `conf/<snippet>` with each `(from, to)` replacement applied.
    pub fn start(snippet: &str, replacements: &[(&str, String)]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf").join(snippet);
        let mut server =
            std::fs::read_to_string(path).unwrap().replace("listen 80;", &format!("listen {addr};"));
        for (from, to) in replacements {
            assert!(server.contains(from), "{snippet} has no `{from}`");
            server = server.replace(from, to);
        }
        let d = dir.path().display();
        let modules = modules_for(&server);
        let conf = format!(
            "{modules}daemon off;\nmaster_process off;\nuser root;\nerror_log {d}/error.log info;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{server}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let nginx = if Path::new("/usr/sbin/nginx").exists() { "/usr/sbin/nginx" } else { "nginx" };
        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed (make test installs it)");
        let nginx = Nginx { addr, child, _dir: dir };
        let up = eventually(Duration::from_secs(10), || std::net::TcpStream::connect(addr).is_ok());
        assert!(up.is_some(), "nginx did not start: {}", nginx.error_log());
        nginx
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("error.log")).unwrap_or_default()
    }
}

/// Where Debian's nginx keeps its dynamic modules.
const MODULES: &str = "/usr/lib/nginx/modules";

/// The `load_module` lines a snippet needs: on Debian an installed module is loaded by the
/// system's nginx.conf (`/etc/nginx/modules-enabled`), which a test's own config does not include.
fn modules_for(snippet: &str) -> String {
    let mut lines = String::new();
    if snippet.contains("more_clear_input_headers") {
        let module = Path::new(MODULES).join("ngx_http_headers_more_filter_module.so");
        assert!(
            module.exists(),
            "{} is missing: install libnginx-mod-http-headers-more-filter (make deps does)",
            module.display()
        );
        lines.push_str(&format!("load_module {};\n", module.display()));
    }
    lines
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
