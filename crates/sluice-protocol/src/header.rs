//! Request and response headers, and whole framed messages.
//!
//! A request carries header v1 (api key, version, correlation id, client id) or, in the API's
//! flexible versions, v2 (the same plus tagged fields). A response carries header v0 (the
//! correlation id) or, in flexible versions, v1 (plus tagged fields) — except ApiVersions, whose
//! response always uses header v0 so that a client can read it before it knows what the broker
//! speaks (KIP-511).

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::frame::encode_frame;
use crate::messages::{
    api_info, ApiVersionsRequest, Decodable, Encodable, Message, Request, RequestHeader, ResponseHeader,
};

/// The request header version for `version` of API `api_key`: 2 in flexible versions, else 1.
pub fn request_header_version(api_key: i16, version: i16) -> i16 {
    match api_info(api_key).and_then(|api| api.flexible_min_version) {
        Some(flexible) if version >= flexible => 2,
        _ => 1,
    }
}

/// The response header version for `version` of API `api_key`: 1 in flexible versions, else 0;
/// always 0 for ApiVersions.
pub fn response_header_version(api_key: i16, version: i16) -> i16 {
    if api_key == ApiVersionsRequest::API_KEY {
        return 0;
    }
    match api_info(api_key).and_then(|api| api.flexible_min_version) {
        Some(flexible) if version >= flexible => 1,
        _ => 0,
    }
}

/// Appends a framed request (size prefix, header, body) to `buf`.
pub fn encode_request<R: Request>(
    buf: &mut BytesMut,
    correlation_id: i32,
    client_id: Option<&str>,
    version: i16,
    request: &R,
) -> Result<(), EncodeError> {
    let header = RequestHeader {
        request_api_key: R::API_KEY,
        request_api_version: version,
        correlation_id,
        client_id: client_id.map(str::to_owned),
        ..RequestHeader::default()
    };
    let header_version = request_header_version(R::API_KEY, version);
    encode_frame(buf, |buf| {
        header.encode(buf, header_version)?;
        request.encode(buf, version)
    })
}

/// Appends a framed response (size prefix, header, body) to `buf`; the broker's side, used by
/// tests and tools that play a broker.
pub fn encode_response<M: Message>(
    buf: &mut BytesMut,
    api_key: i16,
    correlation_id: i32,
    version: i16,
    response: &M,
) -> Result<(), EncodeError> {
    let header = ResponseHeader { correlation_id, ..ResponseHeader::default() };
    let header_version = response_header_version(api_key, version);
    encode_frame(buf, |buf| {
        header.encode(buf, header_version)?;
        response.encode(buf, version)
    })
}

/// Reads the correlation id at the front of a response frame body without consuming it, so a
/// connection can find which in-flight request (and so which API and version) it answers.
pub fn peek_correlation_id(frame: &[u8]) -> Result<i32, DecodeError> {
    match frame.first_chunk::<4>() {
        Some(bytes) => Ok(i32::from_be_bytes(*bytes)),
        None => Err(DecodeError::UnexpectedEof { what: "response header", needed: 4, remaining: frame.len() }),
    }
}

/// Decodes a response frame body (without its size prefix) for a request of type `R` sent at
/// `version`, returning the header and the response. The whole body must be used.
pub fn decode_response<R: Request>(frame: Bytes, version: i16) -> Result<(ResponseHeader, R::Response), DecodeError> {
    let total = frame.len();
    let mut buf = frame;
    let at = |e: DecodeError, buf: &Bytes| e.at(total - buf.len(), total);
    let header =
        ResponseHeader::decode(&mut buf, response_header_version(R::API_KEY, version)).map_err(|e| at(e, &buf))?;
    let response = R::Response::decode(&mut buf, version).map_err(|e| at(e, &buf))?;
    if !buf.is_empty() {
        let e = DecodeError::TrailingBytes { what: <R::Response as Message>::NAME, remaining: buf.len() };
        return Err(at(e, &buf));
    }
    Ok((header, response))
}

/// Decodes the header at the front of a request frame body, choosing the header version from the
/// API key and version it starts with (the first four bytes in every header version). Leaves
/// `frame` at the start of the request body. The broker's side, used by tests and proxies.
pub fn decode_request_header(frame: &mut Bytes) -> Result<RequestHeader, DecodeError> {
    let Some(&[k0, k1, v0, v1]) = frame.first_chunk::<4>() else {
        return Err(DecodeError::UnexpectedEof { what: "request header", needed: 4, remaining: frame.len() });
    };
    let (api_key, version) = (i16::from_be_bytes([k0, k1]), i16::from_be_bytes([v0, v1]));
    let header_version = request_header_version(api_key, version);
    let total = frame.len();
    RequestHeader::decode(frame, header_version).map_err(|e| e.at(total - frame.remaining(), total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;
    use crate::messages::{ApiVersionsResponse, FetchRequest, MetadataRequest, MetadataResponse};

    #[test]
    fn header_versions_follow_flexibility_with_the_apiversions_exception() {
        assert_eq!(request_header_version(FetchRequest::API_KEY, 11), 1);
        assert_eq!(request_header_version(FetchRequest::API_KEY, 12), 2);
        assert_eq!(response_header_version(FetchRequest::API_KEY, 12), 1);
        assert_eq!(request_header_version(ApiVersionsRequest::API_KEY, 3), 2);
        assert_eq!(response_header_version(ApiVersionsRequest::API_KEY, 3), 0);
    }

    #[test]
    fn a_request_frames_and_decodes_back_on_the_broker_side() {
        for version in [0, 8, 9, 12] {
            let topic = crate::messages::metadata_request::MetadataRequestTopic {
                name: Some("clicks".into()),
                ..Default::default()
            };
            let request = MetadataRequest { topics: Some(vec![topic]), ..MetadataRequest::default() };
            let mut wire = BytesMut::new();
            encode_request(&mut wire, 42, Some("sluice"), version, &request).unwrap();
            let mut body = FrameDecoder::default().decode(&mut wire).unwrap().unwrap();
            let header = decode_request_header(&mut body).unwrap();
            assert_eq!((header.request_api_key, header.request_api_version, header.correlation_id), (3, version, 42));
            assert_eq!(header.client_id.as_deref(), Some("sluice"));
            let decoded = crate::messages::decode_exact::<MetadataRequest>(body, version).unwrap();
            assert_eq!(decoded, request);
        }
    }

    #[test]
    fn a_response_frames_and_decodes_back_on_the_client_side() {
        let response = MetadataResponse { cluster_id: Some("c1".into()), ..MetadataResponse::default() };
        let mut wire = BytesMut::new();
        encode_response(&mut wire, MetadataRequest::API_KEY, 7, 12, &response).unwrap();
        let body = FrameDecoder::default().decode(&mut wire).unwrap().unwrap();
        assert_eq!(peek_correlation_id(&body).unwrap(), 7);
        let (header, decoded) = decode_response::<MetadataRequest>(body, 12).unwrap();
        assert_eq!(header.correlation_id, 7);
        assert_eq!(decoded, response);

        let versions = ApiVersionsResponse::default();
        let mut wire = BytesMut::new();
        encode_response(&mut wire, ApiVersionsRequest::API_KEY, 1, 3, &versions).unwrap();
        let body = FrameDecoder::default().decode(&mut wire).unwrap().unwrap();
        let (_, decoded) = decode_response::<ApiVersionsRequest>(body, 3).unwrap();
        assert_eq!(decoded, versions);
    }

    #[test]
    fn short_headers_are_errors() {
        assert!(peek_correlation_id(&[0, 1]).is_err());
        assert!(decode_request_header(&mut Bytes::from_static(&[0, 1, 0])).is_err());
    }
}
