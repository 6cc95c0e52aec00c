//! Runnel's error codes as Kafka's: the one mapping the Kafka listener answers with.

use kafka_protocol::ResponseError as K;
use runnel_proto::pb::{self, ErrorCode as R};

use crate::auth::Access;
use crate::auth::acl::{Operation, Resource};

/// Kafka's error code for a Runnel error code.
pub(super) fn kafka_code(code: R) -> i16 {
    let k = match code {
        R::Unspecified | R::Internal => K::UnknownServerError,
        R::InvalidRequest => K::InvalidRequest,
        R::BrokerShuttingDown | R::BrokerStarting => K::NotLeaderOrFollower,
        R::LimitExceeded => K::PolicyViolation,
        R::Unimplemented => K::UnsupportedVersion,
        R::DeadlineExceeded => K::RequestTimedOut,
        R::UnknownTopic | R::UnknownPartition => K::UnknownTopicOrPartition,
        R::TopicExists => K::TopicAlreadyExists,
        R::InvalidTopicName => K::InvalidTopicException,
        R::InvalidConfig => K::InvalidConfig,
        R::InvalidPartitionCount => K::InvalidPartitions,
        R::OffsetOutOfRange => K::OffsetOutOfRange,
        R::BatchTooLarge => K::MessageTooLarge,
        R::CorruptBatch | R::UnsupportedBatchVersion => K::CorruptMessage,
        R::OutOfOrderSequence => K::OutOfOrderSequenceNumber,
        R::ProducerFenced => K::InvalidProducerEpoch,
        R::UnknownProducer => K::UnknownProducerId,
        R::DuplicateSequence => K::DuplicateSequenceNumber,
        R::DiskFull | R::LogFailed | R::CorruptLog | R::RemoteStorageUnavailable => {
            K::KafkaStorageError
        }
        R::UnknownGroup => K::GroupIdNotFound,
        R::InvalidGroupId => K::InvalidGroupId,
        R::UnknownMember => K::UnknownMemberId,
        R::FencedMember => K::FencedMemberEpoch,
        R::GroupNotEmpty => K::NonEmptyGroup,
        R::InvalidRecordState => K::InvalidRecordState,
        R::UnknownQuota => K::UnknownServerError,
        R::Unauthenticated => K::SaslAuthenticationFailed,
        R::PermissionDenied => K::TopicAuthorizationFailed,
        R::UnknownUser | R::UserExists | R::UnknownToken => K::UnknownServerError,
    };
    k.code()
}

/// Kafka's error code for an inline Runnel error (0 for none).
pub(super) fn inline_code(error: Option<&pb::Error>) -> i16 {
    error.map_or(0, |e| {
        kafka_code(R::try_from(e.code).unwrap_or(R::Internal))
    })
}

/// `TOPIC_AUTHORIZATION_FAILED` if the caller may not do `op` on `topic` (checked, and a
/// refusal audited, by the one authorization point).
pub(super) fn topic_denied(access: &Access, topic: &str, op: Operation) -> Option<i16> {
    access
        .check(Resource::Topic(topic), op)
        .err()
        .map(|_| K::TopicAuthorizationFailed.code())
}

/// `GROUP_AUTHORIZATION_FAILED` if the caller may not do `op` on `group`.
pub(super) fn group_denied(access: &Access, group: &str, op: Operation) -> Option<i16> {
    access
        .check(Resource::Group(group), op)
        .err()
        .map(|_| K::GroupAuthorizationFailed.code())
}
