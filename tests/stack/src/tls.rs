//! An HTTPS front for a stack's gateway, with a certificate from a CA made for the test: to prove
//! the service trusts what `SSL_CERT_FILE` names (a self-hosted Supabase, an egress proxy) and
//! nothing it was not told to.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::{bail, Context as _, Result};

use crate::{free_port, process, Stack};

pub struct TlsGateway {
    pub port: u16,
    /// The test CA's certificate (PEM), to give the service as `SSL_CERT_FILE`.
    pub ca: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl").args(args).current_dir(dir).output().context("running openssl")?;
    if !out.status.success() {
        bail!("openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl TlsGateway {
    /// Starts nginx on a free loopback port, terminating TLS for 127.0.0.1 with a certificate the
    /// new CA signed, and passing everything on to `stack`'s gateway.
    pub fn start(stack: &Stack) -> Result<TlsGateway> {
        let dir = stack.dir().join(format!("tls-{}", free_port()));
        fs::create_dir_all(dir.join("tmp"))?;
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=devstack test CA",
            ],
        )?;
        openssl(
            &dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        )?;
        fs::write(
            dir.join("san.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )?;
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        )?;
        let port = free_port();
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
               server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {d}/server.pem;\n    ssl_certificate_key {d}/server.key;\n\
                 location / {{ proxy_pass http://127.0.0.1:{gateway}; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
            gateway = stack.gateway_port,
        );
        fs::write(dir.join("nginx.conf"), conf)?;
        let mut cmd = Command::new(stack.nginx_bin());
        cmd.arg("-c").arg(dir.join("nginx.conf")).arg("-p").arg(&dir).arg("-e").arg(dir.join("error.log"));
        let child = process::spawn(cmd, &dir.join("nginx.log"))?;
        let gateway = TlsGateway { port, ca: dir.join("ca.pem"), dir, child: Some(child) };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > until {
                bail!("the TLS gateway did not start; see {}", gateway.dir.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        Ok(gateway)
    }

    /// The project URL over HTTPS, as `SUPABASE_URL` would be.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsGateway {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            process::stop(child, libc::SIGKILL);
        }
    }
}
