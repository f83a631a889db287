//! `weir lb vip|real`: one change to the applied XdpLoadBalancer document
//! (weir_lb::edit), applied like a whole document: checked, written to the
//! kernel as map updates, kept in the state dir.

use weir_lb::edit::{self, Edit};
use weir_lb::spec::VipSpec;
use weir_proto::agent::v1 as pb;

use super::{LbError, LbState};

/// The edit a request asks for.
fn edit_of(request: pb::LbEditRequest) -> Result<Edit, LbError> {
    use pb::lb_edit_request::Edit as E;
    let real = |r: pb::LbRealEdit| -> Result<(String, String, Option<u16>, Option<u32>), LbError> {
        let port = match r.port {
            0 => None,
            p => Some(u16::try_from(p).map_err(|_| LbError::Spec(format!("port {p} is not a port (1-65535)")))?),
        };
        Ok((r.vip, r.address, port, r.weight))
    };
    Ok(match request.edit.ok_or_else(|| LbError::Spec("an edit names what to change".into()))? {
        E::VipAdd(text) => {
            let vip: VipSpec =
                weir_spec::parse_yaml(&text).map_err(|e| LbError::Spec(format!("the VIP to add: {e}")))?;
            Edit::VipAdd(vip)
        }
        E::VipDelete(name) => Edit::VipDelete { name },
        E::RealAdd(r) => {
            let (vip, address, port, weight) = real(r)?;
            Edit::RealAdd { vip, address, port, weight }
        }
        E::RealDelete(r) => {
            let (vip, address, port, _) = real(r)?;
            Edit::RealDelete { vip, address, port }
        }
        E::RealDrain(r) => {
            let (vip, address, port, _) = real(r)?;
            Edit::RealDrain { vip, address, port }
        }
    })
}

impl LbState {
    /// Makes one change to the document and applies the result whole;
    /// returns what the edit did, then what changed in the kernel.
    pub fn edit(&mut self, request: pb::LbEditRequest) -> Result<Vec<String>, LbError> {
        self.maps()?;
        let edit = edit_of(request)?;
        let current = self.written.clone().unwrap_or_else(edit::empty_document);
        let (edited, line) = edit::apply(&current, &edit)
            .map_err(|e| LbError::Spec(format!("XdpLoadBalancer {}: {e}", current.metadata.name)))?;
        let text = serde_json::to_string_pretty(&edited).map_err(|e| LbError::Spec(e.to_string()))?;
        let mut lines = vec![line];
        lines.extend(self.apply(&text)?);
        Ok(lines)
    }
}
