"""WebRTC: the offer endpoint, the peer-connection session, video in and annotated video out."""
