package org.example.procfhir.hapi;

import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.interceptor.api.Hook;
import ca.uhn.fhir.interceptor.api.Interceptor;
import ca.uhn.fhir.interceptor.api.Pointcut;
import java.util.Set;
import org.hl7.fhir.instance.model.api.IBaseResource;
import org.springframework.transaction.support.TransactionSynchronization;
import org.springframework.transaction.support.TransactionSynchronizationManager;

/**
 * Clears the validation support chain's caches once a write of a conformance resource
 * (StructureDefinition, ValueSet, CodeSystem, ...) or an expunge has been committed, so that the
 * next {@code $validate} sees the new definitions rather than cached ones.
 */
@Interceptor
public class ValidationCacheInvalidator {

	private static final Set<String> CONFORMANCE_TYPES = Set.of(
			"StructureDefinition", "ValueSet", "CodeSystem", "ConceptMap", "NamingSystem", "ImplementationGuide");

	private final IValidationSupport myValidationSupport;

	public ValidationCacheInvalidator(IValidationSupport theValidationSupport) {
		myValidationSupport = theValidationSupport;
	}

	@Hook(Pointcut.STORAGE_PRECOMMIT_RESOURCE_CREATED)
	public void created(IBaseResource theResource) {
		onChange(theResource);
	}

	@Hook(Pointcut.STORAGE_PRECOMMIT_RESOURCE_UPDATED)
	public void updated(IBaseResource theOldResource, IBaseResource theNewResource) {
		onChange(theNewResource);
	}

	@Hook(Pointcut.STORAGE_PRECOMMIT_RESOURCE_DELETED)
	public void deleted(IBaseResource theResource) {
		onChange(theResource);
	}

	@Hook(Pointcut.STORAGE_PRESTORAGE_EXPUNGE_EVERYTHING)
	public void expungeEverything() {
		invalidateAfterCommit();
	}

	private void onChange(IBaseResource theResource) {
		if (theResource != null && CONFORMANCE_TYPES.contains(theResource.fhirType())) {
			invalidateAfterCommit();
		}
	}

	private void invalidateAfterCommit() {
		myValidationSupport.invalidateCaches();
		if (TransactionSynchronizationManager.isSynchronizationActive()) {
			TransactionSynchronizationManager.registerSynchronization(new TransactionSynchronization() {
				@Override
				public void afterCompletion(int theStatus) {
					myValidationSupport.invalidateCaches();
				}
			});
		}
	}
}
